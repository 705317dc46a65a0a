//! How the parent and a worker frame their messages, on a socket private to the two of them.
//!
//! A message is a frame count, then each frame as its length and bytes; every number is a little-endian
//! u64. A pickle travels as its frames: the pickle, then its out-of-band buffers (pickle protocol 5),
//! so large arrays are not copied into the pickle stream.
//!
//! A request's first frame is a header of u64 words: `[op, n, *n ids to release, ...]`, then for
//! [`RUN`]: `[result id, flags, n blocks, (n ids, *ids, n frames) per block]`, where each block is a
//! reply of another worker to a [`FETCH`] (its values are stored under those ids), and the call's
//! frames follow the blocks'; for [`FETCH`]: `[n, *ids]`. A reply is one pickle:
//! `(True, value, records)` or `(False, exception, formatted traceback, records)`, where `records` are
//! the log records the worker emitted since its last [`RUN`] reply (none in a [`FETCH`] reply).

use std::io::{self, Read, Write};

/// Runs a call, after storing the values of the blocks that come with it.
pub const RUN: u64 = 1;
/// Replies with a list of stored values.
pub const FETCH: u64 = 2;
/// [`RUN`] flag: the worker stores the result under the result id (other tasks need it).
pub const KEEP: u8 = 1;
/// [`RUN`] flag: the worker sends the result back (an output); without it, a kept result's reply
/// carries its size in bytes instead.
pub const SEND: u8 = 2;

/// Writes one message; the caller flushes.
pub fn write_message(out: &mut impl Write, frames: &[Vec<u8>]) -> io::Result<()> {
    out.write_all(&(frames.len() as u64).to_le_bytes())?;
    for frame in frames {
        out.write_all(&(frame.len() as u64).to_le_bytes())?;
        out.write_all(frame)?;
    }
    Ok(())
}

/// Frames larger than this are read in steps rather than allocated up front, so that a corrupt
/// length fails at the end of the stream instead of aborting on an impossible allocation.
const ALLOCATE_AT_ONCE: u64 = 1 << 26;

/// Reads one message's frames.
pub fn read_message(input: &mut impl Read) -> io::Result<Vec<Vec<u8>>> {
    let count = read_word(input)?;
    let mut frames = Vec::new();
    for _ in 0..count {
        let length = read_word(input)?;
        let mut frame = Vec::with_capacity(length.min(ALLOCATE_AT_ONCE) as usize);
        input.take(length).read_to_end(&mut frame)?;
        if frame.len() as u64 != length {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        frames.push(frame);
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn message(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        write_message(&mut out, frames).expect("writing to memory");
        out
    }

    #[test]
    fn messages_match_the_golden_vectors_both_ways() {
        let cases: [(&str, Vec<Vec<u8>>); 3] = [
            ("empty", vec![]),
            ("two-frames", vec![b"ab".to_vec(), Vec::new()]),
            (
                "run-header",
                vec![header(RUN, &[7], &[42, u64::from(SEND), 0])],
            ),
        ];
        for (name, frames) in cases {
            let bytes = golden(name);
            assert_eq!(message(&frames), bytes, "{name}");
            assert_eq!(read_message(&mut &bytes[..]).expect(name), frames, "{name}");
        }
        assert_eq!(
            message(&[header(FETCH, &[], &[2, 5, 6])]),
            golden("fetch-header")
        );
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
    }

    #[test]
    fn a_truncated_message_is_an_error_not_a_short_read() {
        let bytes = golden("two-frames");
        for cut in 0..bytes.len() {
            assert!(read_message(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
