//! Just enough HTTP/1.x for the metadata service, with no I/O: finding and parsing a request
//! head, and writing a response head. Requests with a body are answered and the connection
//! closed, so bodies are never read.

use super::route::{Answer, reason};

/// HTTP/1.0 or HTTP/1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Version {
    Http10,
    Http11,
}

/// The parts of a request head the service uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Head<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub version: Version,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

/// A head we will not answer normally; each maps to a status and a closed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeadError {
    /// 400
    Malformed,
    /// 505
    Version,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            Self::Malformed => 400,
            Self::Version => 505,
        }
    }
}

/// The number of leading CR/LF bytes (RFC 9112 lets a server skip empty lines before a
/// request line).
pub(super) fn leading_blank(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()
}

/// The length of the head at the start of `buf` (through the blank line ending it), once it
/// is complete. Accepts bare LF line ends.
pub(super) fn head_len(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, byte) in buf.iter().enumerate() {
        if *byte != b'\n' {
            continue;
        }
        let line = &buf[line_start..i];
        if line.is_empty() || line == b"\r" {
            return Some(i + 1);
        }
        line_start = i + 1;
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a complete head (as delimited by [`head_len`]).
pub(super) fn parse_head(head: &[u8]) -> Result<Head<'_>, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(HeadError::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if !is_token(method) || target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HeadError::Malformed);
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        v if v.starts_with("HTTP/") => return Err(HeadError::Version),
        _ => return Err(HeadError::Malformed),
    };
    let mut close = false;
    let mut keep_alive_asked = false;
    let mut body = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or(HeadError::Malformed)?;
        // a name with surrounding whitespace, or an obsolete folded line, is malformed
        if !is_token(name) {
            return Err(HeadError::Malformed);
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(HeadError::Malformed);
        }
        if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                close |= option.eq_ignore_ascii_case("close");
                keep_alive_asked |= option.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let length: u64 = value.parse().map_err(|_| HeadError::Malformed)?;
            body |= length > 0;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            body = true;
        }
    }
    let keep_alive = !close
        && !body
        && match version {
            Version::Http11 => true,
            Version::Http10 => keep_alive_asked,
        };
    Ok(Head {
        method,
        target,
        version,
        keep_alive,
    })
}

/// The response head for `answer`; `keep_alive` decides the `Connection` header.
pub(super) fn response_head(answer: &Answer, version: Version, keep_alive: bool) -> Vec<u8> {
    let version = match version {
        Version::Http10 => "HTTP/1.0",
        Version::Http11 => "HTTP/1.1",
    };
    let mut head = format!(
        "{version} {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        answer.status,
        reason(answer.status),
        answer.content_type,
        answer.content_length,
    );
    if answer.status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    head.into_bytes()
}
