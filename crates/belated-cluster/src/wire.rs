//! How the parent and a worker frame their messages, on a socket private to the two of them.
//!
//! A message is a frame count, then each frame as its length and bytes; every number is a little-endian
//! u64. A pickle travels as its frames: the pickle, then its out-of-band buffers (pickle protocol 5),
//! so large arrays are not copied into the pickle stream.
//!
//! A large buffer travels as a [`Segment`] of shared memory instead of bytes: its length word has the
//! [`SEGMENT`] bit set, no bytes follow, and the segment's descriptor comes with the length word
//! (`SCM_RIGHTS`). The writer fills the segment once; every reader maps it, and the kernel frees it
//! when its last holder (descriptor or mapping) is gone, crashes included: segments are anonymous
//! (`memfd`), with no name anyone must remove. A stream that cannot carry descriptors sends bytes only.
//!
//! A request's first frame is a header of u64 words: `[op, n, *n ids to release, ...]`, then for
//! [`RUN`]: `[result id, flags, n blocks, (n ids, *ids, n frames) per block]`, where each block is a
//! reply of another worker to a [`FETCH`] (its values are stored under those ids), and the call's
//! frames follow the blocks'; for [`FETCH`]: `[n, *ids]`; for [`BATCH`]: `[overrun µs, n, (result
//! id, flags, n frames) per call]`, the calls' frames following in order; a call flagged
//! [`SAME_FUNCTION`] leaves out its first frame (its function), which is the call's before it. A batch's replies
//! ([`BatchReply`]) are a frame of u64 words `[n, first, end, n frames per reply]`, then the replies
//! of calls `first..first + n`, each as a [`RUN`] of that call alone would have it. Calls `end..`
//! were not started and never will be: the worker hands them back. A batch is one reply (`first`
//! 0, `n` = `end` = the calls), unless it runs longer than its overrun: then the worker replies at
//! once with the replies it has, ending the batch after the call it runs, and that call's reply
//! follows alone when it is done.
//! A reply is one pickle:
//! `(True, value, records)` or `(False, the exception's pickle or None, its type name, its message,
//! formatted traceback, its frames, records)` (the reader rebuilds the exception, or a `RemoteError`
//! from the rest), where `records` are the log records the worker emitted since its last [`RUN`] reply
//! (none in a [`FETCH`] reply).
//!
//! While a task runs, its worker may ask the parent something on the same connection (a task that
//! submits tasks, through `get_client()`): a message whose first frame is the header `[CLIENT, 0]`,
//! then a pickle's frames. The parent answers with one reply pickle and goes on waiting for the
//! task's reply. No reply can be taken for such a request: a reply's first frame is a pickle (which
//! starts with the PROTO opcode, 0x80) or a [`BATCH`] reply's header (three words at least).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// Runs a call, after storing the values of the blocks that come with it.
pub const RUN: u64 = 1;
/// Replies with a list of stored values.
pub const FETCH: u64 = 2;
/// Runs several calls whose inputs are all in the call or in the worker, one after the other.
pub const BATCH: u64 = 3;
/// A worker's request to the parent, sent while one of its tasks runs (see the module's text).
pub const CLIENT: u64 = 4;
/// [`RUN`] flag: the worker stores the result under the result id (other tasks need it).
pub const KEEP: u8 = 1;
/// [`RUN`] flag: the worker sends the result back (an output); without it, a kept result's reply
/// carries its size in bytes instead.
pub const SEND: u8 = 2;
/// [`BATCH`] flag: the call's first frame, its function's pickle, is the previous call's, and is
/// not sent again (most calls of a batch call one function, whose pickle is hundreds of bytes).
pub const SAME_FUNCTION: u8 = 4;
/// The bit of a frame's length word that says the frame is a [`Segment`] of that length.
pub const SEGMENT: u64 = 1 << 63;

/// One frame of a message: bytes, or a segment of shared memory.
#[derive(Debug, Clone)]
pub enum Frame {
    Bytes(Vec<u8>),
    /// Shared, so that one segment can go to several workers without being copied.
    Segment(Arc<Segment>),
}

impl Frame {
    /// Its length in bytes, wherever they are.
    pub fn len(&self) -> usize {
        match self {
            Frame::Bytes(bytes) => bytes.len(),
            Frame::Segment(segment) => segment.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for Frame {
    fn from(bytes: Vec<u8>) -> Self {
        Frame::Bytes(bytes)
    }
}

/// Frames are equal when they hold the same bytes, or are the same segment.
impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Frame::Bytes(a), Frame::Bytes(b)) => a == b,
            (Frame::Segment(a), Frame::Segment(b)) => a.same_memory(b),
            _ => false,
        }
    }
}

/// A buffer in shared memory: a sealed memory file (no name, freed with its last descriptor or
/// mapping). Its writer sealed it, so its length is fixed and a reader's mapping never faults.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    len: usize,
}

impl Segment {
    /// The segment of the memory file `fd` (its whole length).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: fstat fills the zeroed stat of a valid descriptor.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = usize::try_from(stat.st_size).map_err(|_| io::ErrorKind::InvalidData)?;
        Ok(Segment { fd, len })
    }

    /// A new sealed segment holding a copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> io::Result<Self> {
        // SAFETY: memfd_create with a NUL-terminated name returns a new descriptor or -1.
        let raw = unsafe {
            libc::memfd_create(
                c"belated".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just created and nobody else owns it.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        file.write_all(bytes)?;
        // The future-write seal (Linux 5.1), as the Python worker seals: the write seal waits for
        // other references to the pages to go, and fails with EBUSY after ~150 ms on a loaded machine.
        let fixed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        let seal = |write: libc::c_int| -> io::Result<()> {
            // SAFETY: fcntl on a descriptor we own.
            match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, fixed | write) } {
                0.. => Ok(()),
                _ => Err(io::Error::last_os_error()),
            }
        };
        match seal(libc::F_SEAL_FUTURE_WRITE) {
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => seal(libc::F_SEAL_WRITE)?,
            sealed => sealed?,
        }
        Self::new(file.into())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether both are the same memory (one file), even through different descriptors.
    pub fn same_memory(&self, other: &Segment) -> bool {
        let identity = |segment: &Segment| {
            // SAFETY: as in `new`.
            let mut stat: libc::stat = unsafe { std::mem::zeroed() };
            (unsafe { libc::fstat(segment.fd.as_raw_fd(), &mut stat) } == 0)
                .then_some((stat.st_dev, stat.st_ino))
        };
        matches!((identity(self), identity(other)), (Some(a), Some(b)) if a == b)
    }

    /// Its bytes, copied (for tests and for streams that cannot carry it).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; self.len];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::from(self.fd.try_clone()?),
            &mut bytes,
            0,
        )?;
        Ok(bytes)
    }
}

/// A stream that can carry descriptors along with its bytes.
pub trait SendDescriptor: Write {
    /// Writes `bytes` (after anything buffered) with `fd` attached to them.
    fn write_with_descriptor(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()>;
}

/// A stream that received descriptors along with its bytes, in order.
pub trait ReceiveDescriptor: Read {
    /// The oldest descriptor received and not yet taken.
    fn take_descriptor(&mut self) -> io::Result<OwnedFd>;
}

fn no_descriptors() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "a shared-memory segment on a stream that carries no descriptors",
    )
}

/// Bytes in memory carry no descriptors.
impl SendDescriptor for Vec<u8> {
    fn write_with_descriptor(&mut self, _: &[u8], _: BorrowedFd<'_>) -> io::Result<()> {
        Err(no_descriptors())
    }
}

impl ReceiveDescriptor for &[u8] {
    fn take_descriptor(&mut self) -> io::Result<OwnedFd> {
        Err(no_descriptors())
    }
}

/// Writes one message; the caller flushes.
pub fn write_message(out: &mut impl SendDescriptor, frames: &[Frame]) -> io::Result<()> {
    out.write_all(&(frames.len() as u64).to_le_bytes())?;
    for frame in frames {
        match frame {
            Frame::Bytes(bytes) => {
                out.write_all(&(bytes.len() as u64).to_le_bytes())?;
                out.write_all(bytes)?;
            }
            Frame::Segment(segment) => {
                let word = segment.len() as u64 | SEGMENT;
                out.write_with_descriptor(&word.to_le_bytes(), segment.fd())?;
            }
        }
    }
    Ok(())
}

/// Frames larger than this are read in steps rather than allocated up front, so that a corrupt
/// length fails at the end of the stream instead of aborting on an impossible allocation.
const ALLOCATE_AT_ONCE: u64 = 1 << 26;

/// Reads one message's frames.
pub fn read_message(input: &mut impl ReceiveDescriptor) -> io::Result<Vec<Frame>> {
    let count = read_word(input)?;
    let mut frames = Vec::new();
    for _ in 0..count {
        let length = read_word(input)?;
        if length & SEGMENT != 0 {
            let segment = Segment::new(input.take_descriptor()?)?;
            if segment.len() as u64 != length & !SEGMENT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a segment's length is not the one announced",
                ));
            }
            frames.push(Frame::Segment(Arc::new(segment)));
            continue;
        }
        let mut frame = Vec::with_capacity(length.min(ALLOCATE_AT_ONCE) as usize);
        input.take(length).read_to_end(&mut frame)?;
        if frame.len() as u64 != length {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        frames.push(Frame::Bytes(frame));
    }
    Ok(frames)
}

fn read_word(input: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// A request's header frame: `op`, the ids the worker may forget, then the op's own words.
pub fn header(op: u64, releases: &[u64], rest: &[u64]) -> Vec<u8> {
    [op, releases.len() as u64]
        .iter()
        .chain(releases)
        .chain(rest)
        .flat_map(|word| word.to_le_bytes())
        .collect()
}

/// One reply message of a [`BATCH`] (see the module's text).
#[derive(Debug)]
pub struct BatchReply {
    /// The index of the call whose reply comes first.
    pub first: usize,
    /// The calls from this one on were handed back, not run.
    pub end: usize,
    /// Each call's reply frames, from `first` on.
    pub replies: Vec<Vec<Frame>>,
}

impl BatchReply {
    /// A reply of a batch of `calls` calls whose replies before `expected` came already; `None` if
    /// it has another shape, or the replies are not the next ones.
    pub fn parse(reply: Vec<Frame>, calls: usize, expected: usize) -> Option<BatchReply> {
        let mut frames = reply.into_iter();
        let words: Vec<u64> = match frames.next() {
            Some(Frame::Bytes(header)) if header.len() >= 24 && header.len() % 8 == 0 => header
                .chunks_exact(8)
                .map(|word| u64::from_le_bytes(word.try_into().expect("eight bytes")))
                .collect(),
            _ => return None,
        };
        let n = usize::try_from(words[0]).ok()?;
        let first = usize::try_from(words[1]).ok()?;
        let end = usize::try_from(words[2]).ok()?;
        let counts = &words[3..];
        let well_formed = counts.len() == n
            && first == expected
            && first.checked_add(n)? <= end
            && end <= calls
            && counts.iter().sum::<u64>() == frames.len() as u64;
        if !well_formed {
            return None;
        }
        let replies = counts
            .iter()
            .map(|&count| frames.by_ref().take(count as usize).collect())
            .collect();
        Some(BatchReply {
            first,
            end,
            replies,
        })
    }

    /// Whether it is the batch's last reply: none of its calls is still running.
    pub fn is_last(&self) -> bool {
        self.first + self.replies.len() == self.end
    }
}

/// A [`BatchReply`]'s header frame: the replies of calls `first..` with `counts` frames each, of a
/// batch that ends at `end`.
pub fn batch_reply_header(first: u64, end: u64, counts: &[u64]) -> Vec<u8> {
    [counts.len() as u64, first, end]
        .iter()
        .chain(counts)
        .flat_map(|word| word.to_le_bytes())
        .collect()
}

/// Whether a message from a worker is its request to the parent ([`CLIENT`]) rather than a reply.
pub fn is_client_request(frames: &[Frame]) -> bool {
    matches!(frames.first(), Some(Frame::Bytes(first)) if first[..] == header(CLIENT, &[], &[])[..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// The golden vectors, shared with the Python worker's tests: `name hex` per line.
    fn golden(name: &str) -> Vec<u8> {
        let line = include_str!("../golden/wire.txt")
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no golden vector {name}"));
        (0..line.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn message(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        write_message(&mut out, frames).expect("writing to memory");
        out
    }

    fn bytes(frames: &[&[u8]]) -> Vec<Frame> {
        frames
            .iter()
            .map(|frame| Frame::from(frame.to_vec()))
            .collect()
    }

    /// A stream in memory that carries descriptors as a socket does: each attached to its bytes.
    #[derive(Default)]
    struct Descriptors {
        bytes: Vec<u8>,
        /// Where in `bytes` each descriptor was attached, and a copy of it.
        descriptors: VecDeque<(usize, OwnedFd)>,
        read: usize,
    }

    impl Write for Descriptors {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SendDescriptor for Descriptors {
        fn write_with_descriptor(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
            self.descriptors
                .push_back((self.bytes.len(), fd.try_clone_to_owned()?));
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
    }

    impl Read for Descriptors {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = (&self.bytes[self.read..]).read(buf)?;
            self.read += n;
            Ok(n)
        }
    }

    impl ReceiveDescriptor for Descriptors {
        fn take_descriptor(&mut self) -> io::Result<OwnedFd> {
            match self.descriptors.front() {
                Some((at, _)) if *at < self.read => Ok(self.descriptors.pop_front().expect("").1),
                _ => Err(io::ErrorKind::NotFound.into()),
            }
        }
    }

    #[test]
    fn messages_match_the_golden_vectors_both_ways() {
        let cases: [(&str, Vec<Frame>); 3] = [
            ("empty", vec![]),
            ("two-frames", bytes(&[b"ab", b""])),
            (
                "run-header",
                vec![header(RUN, &[7], &[42, u64::from(SEND), 0]).into()],
            ),
        ];
        for (name, frames) in cases {
            let bytes = golden(name);
            assert_eq!(message(&frames), bytes, "{name}");
            assert_eq!(read_message(&mut &bytes[..]).expect(name), frames, "{name}");
        }
        assert_eq!(
            message(&[header(FETCH, &[], &[2, 5, 6]).into()]),
            golden("fetch-header")
        );
        let batch = [42, u64::from(SEND), 1, 43, u64::from(KEEP), 1];
        assert_eq!(
            message(&[header(BATCH, &[7], &[&[40_000, 2][..], &batch].concat()).into()]),
            golden("batch-header")
        );
        // A batch of two calls of one function: the second's leaves it out.
        let same = [
            42,
            u64::from(SEND),
            2,
            43,
            u64::from(SEND | SAME_FUNCTION),
            1,
        ];
        assert_eq!(
            message(&[header(BATCH, &[], &[&[40_000, 2][..], &same].concat()).into()]),
            golden("batch-same-function")
        );
        // The first reply of a batch of three that overran while its second call ran: the first
        // call's reply (one frame), the third call handed back.
        let partial = [batch_reply_header(0, 2, &[1]).into(), b"ab".to_vec().into()];
        assert_eq!(message(&partial), golden("batch-reply"));
        let read = read_message(&mut &golden("batch-reply")[..]).expect("batch-reply");
        let reply = BatchReply::parse(read, 3, 0).expect("a batch reply");
        assert_eq!((reply.first, reply.end, reply.is_last()), (0, 2, false));
        assert_eq!(reply.replies, [bytes(&[b"ab"])]);
        let request = [header(CLIENT, &[], &[]).into(), b"ab".to_vec().into()];
        assert_eq!(message(&request), golden("client-request"));
        let read = read_message(&mut &golden("client-request")[..]).expect("client-request");
        assert!(is_client_request(&read));
    }

    #[test]
    fn no_reply_is_taken_for_a_client_request() {
        let pickle = b"\x80\x05\x95\x00".to_vec();
        let batch_reply = batch_reply_header(0, 0, &[]);
        let run = header(RUN, &[], &[1, 0, 0]);
        for first in [pickle, batch_reply, run] {
            assert!(!is_client_request(&[first.into()]));
        }
        assert!(!is_client_request(&[]));
    }

    #[test]
    fn a_batch_reply_that_does_not_fit_its_batch_is_refused() {
        let parse = |header: Vec<u8>, frames: usize, calls, expected| {
            let mut reply = vec![Frame::from(header)];
            reply.extend((0..frames).map(|_| Frame::from(b"r".to_vec())));
            BatchReply::parse(reply, calls, expected)
        };
        let last = parse(batch_reply_header(1, 3, &[1, 1]), 2, 3, 1).expect("calls 1 and 2");
        assert!(last.is_last());
        assert!(
            parse(batch_reply_header(0, 3, &[1, 1]), 2, 3, 1).is_none(),
            "not the next"
        );
        assert!(
            parse(batch_reply_header(0, 4, &[1]), 1, 3, 0).is_none(),
            "past the batch"
        );
        assert!(
            parse(batch_reply_header(0, 1, &[1, 1]), 2, 3, 0).is_none(),
            "past its end"
        );
        assert!(
            parse(batch_reply_header(0, 2, &[1, 1]), 1, 3, 0).is_none(),
            "frames missing"
        );
        assert!(
            parse(0u64.to_le_bytes().to_vec(), 0, 3, 0).is_none(),
            "the old shape"
        );
    }

    #[test]
    fn a_segment_travels_as_its_descriptor_attached_to_its_length_word() {
        let segment = Arc::new(Segment::from_bytes(b"hello").expect("a memfd"));
        let frames = vec![Frame::Segment(Arc::clone(&segment)), b"ab".to_vec().into()];
        let mut stream = Descriptors::default();
        write_message(&mut stream, &frames).expect("written");
        assert_eq!(stream.bytes, golden("segment-then-bytes"));
        // The descriptor rides on the segment's length word, right after the frame count.
        assert_eq!(stream.descriptors.len(), 1);
        assert_eq!(stream.descriptors[0].0, 8);
        let read = read_message(&mut stream).expect("read back");
        assert_eq!(read, frames, "the same memory, not a copy of it");
        let Frame::Segment(received) = &read[0] else {
            panic!("{read:?}")
        };
        assert_eq!(received.to_vec().expect("its bytes"), b"hello");
    }

    #[test]
    fn a_segment_needs_a_stream_that_carries_descriptors() {
        let segment = Arc::new(Segment::from_bytes(b"hello").expect("a memfd"));
        let mut out = Vec::new();
        let written = write_message(&mut out, &[Frame::Segment(segment)]);
        assert_eq!(
            written.expect_err("no descriptors").kind(),
            io::ErrorKind::Unsupported
        );
        let bytes = golden("segment-then-bytes");
        assert!(read_message(&mut &bytes[..]).is_err());
    }

    #[test]
    fn a_segment_whose_length_is_not_the_announced_one_is_refused() {
        let segment = Segment::from_bytes(b"hello").expect("a memfd");
        let mut stream = Descriptors::default();
        stream.bytes.extend(1u64.to_le_bytes());
        stream
            .write_with_descriptor(&(4 | SEGMENT).to_le_bytes(), segment.fd())
            .expect("written");
        let error = read_message(&mut stream).expect_err("a lie about its length");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn segments_are_sealed() {
        let segment = Segment::from_bytes(b"hello").expect("a memfd");
        let mut file = std::fs::File::from(segment.fd().try_clone_to_owned().expect("dup"));
        assert!(file.write_all(b"more").is_err(), "it cannot grow");
        assert!(file.set_len(1).is_err(), "it cannot shrink");
        assert_eq!(segment.to_vec().expect("its bytes"), b"hello");
    }

    #[test]
    fn corrupt_counts_and_lengths_are_errors_not_aborts() {
        let huge = u64::MAX.to_le_bytes();
        let one = 1u64.to_le_bytes();
        assert!(read_message(&mut &huge[..]).is_err(), "a frame count");
        assert!(
            read_message(&mut &[one, huge].concat()[..]).is_err(),
            "a frame length"
        );
        let large = (u64::MAX >> 1).to_le_bytes();
        assert!(
            read_message(&mut &[one, large].concat()[..]).is_err(),
            "a frame length without the segment bit"
        );
    }

    #[test]
    fn a_truncated_message_is_an_error_not_a_short_read() {
        let bytes = golden("two-frames");
        for cut in 0..bytes.len() {
            assert!(read_message(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
