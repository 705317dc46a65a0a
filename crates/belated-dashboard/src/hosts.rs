//! Which `Host` headers the server answers: the defence against DNS rebinding, where a web page on
//! another site points its own name at this machine's address to read the dashboard with the user's
//! browser. Such a request names the other site in its `Host` header; requests that name this server
//! are answered.
//!
//! Answered: an IP address literal (a rebinding attack needs a DNS name), the host the dashboard was
//! started with, `localhost` (and `*.localhost`) when it listens on loopback or on every address, and
//! this machine's host name when it listens on every address.

use std::net::IpAddr;

#[derive(Debug, Clone)]
pub(crate) struct AllowedHosts {
    /// Lowercase names, without a trailing dot.
    names: Vec<String>,
    localhost: bool,
}

impl AllowedHosts {
    pub(crate) fn new(given: &str, bound: IpAddr) -> Self {
        let mut names = vec![normal(given)];
        if bound.is_unspecified() {
            names.extend(machine_name().map(|name| normal(&name)));
        }
        AllowedHosts {
            names,
            localhost: bound.is_loopback() || bound.is_unspecified(),
        }
    }

    /// Whether a request with this `Host` header (absent: `None`) is answered.
    pub(crate) fn admits(&self, header: Option<&str>) -> bool {
        let Some(name) = header.and_then(host_name) else {
            return false;
        };
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normal(name);
        (self.localhost && (name == "localhost" || name.ends_with(".localhost")))
            || self.names.iter().any(|allowed| {
                // A short host name also answers as the start of its fully qualified one.
                *allowed == name
                    || name
                        .strip_prefix(allowed.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
    }
}

fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The host part of a `Host` header: `name`, `name:port`, `[v6]` or `[v6]:port`.
fn host_name(header: &str) -> Option<&str> {
    let header = header.trim();
    if let Some(bracketed) = header.strip_prefix('[') {
        let (address, rest) = bracketed.split_once(']')?;
        return (rest.is_empty() || is_port(rest.strip_prefix(':')?)).then_some(address);
    }
    let name = match header.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return None,
        None => header,
    };
    (!name.is_empty()).then_some(name)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

fn machine_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0)?;
    String::from_utf8(buffer[..end].to_vec())
        .ok()
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> AllowedHosts {
        AllowedHosts::new("127.0.0.1", "127.0.0.1".parse().unwrap())
    }

    #[test]
    fn loopback_answers_its_address_and_localhost_names_only() {
        let hosts = loopback();
        for ok in [
            "127.0.0.1:8787",
            "localhost:8787",
            "LOCALHOST",
            "localhost.:1",
            "app.localhost:8787",
            "[::1]:8787",
            "127.0.0.1",
        ] {
            assert!(hosts.admits(Some(ok)), "{ok}");
        }
        for refused in [
            "evil.example:8787",
            "localhost.evil.example",
            "evil-localhost",
            "",
            ":8787",
            "a:b",
            "[::1]x",
        ] {
            assert!(!hosts.admits(Some(refused)), "{refused}");
        }
        assert!(!hosts.admits(None), "HTTP/1.1 requires a Host header");
    }

    #[test]
    fn a_named_host_answers_its_name_and_fully_qualified_forms() {
        let hosts = AllowedHosts::new("Box", "10.1.2.3".parse().unwrap());
        assert!(hosts.admits(Some("box:8787")));
        assert!(hosts.admits(Some("box.lab.example:8787")));
        assert!(hosts.admits(Some("10.1.2.3:8787")));
        assert!(
            !hosts.admits(Some("localhost:8787")),
            "not listening on loopback"
        );
        assert!(!hosts.admits(Some("boxes.example")));
    }
}
