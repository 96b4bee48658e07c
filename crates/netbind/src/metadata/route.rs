//! The router: `(method, request target)` to status, type and bytes, with no I/O. Serves
//! Nova's `/openstack/...` tree and EC2's `/<version>/meta-data/...` tree.

use super::content::Metadata;

/// OpenStack metadata versions we answer (Nova's, through Rocky), oldest first, then `latest`.
pub const OPENSTACK_VERSIONS: &[&str] = &[
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "latest",
];

/// EC2 metadata versions we answer: the ones whose content is a subset of 2009-04-04's, which
/// is cloud-init's minimum. Newer versions (2016-09-02, 2018-09-24, 2021-03-23), which
/// cloud-init probes first, answer 404 so it falls back to 2009-04-04.
pub const EC2_VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "latest",
];

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const OCTETS: &str = "application/octet-stream";

/// One response, without the HTTP framing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    /// Empty for HEAD.
    pub body: Vec<u8>,
    /// The length of the body a GET gets (what HEAD's `Content-Length` says).
    pub content_length: usize,
}

impl Answer {
    fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type,
            content_length: body.len(),
            body,
        }
    }

    /// A status with a one-line text body naming it.
    pub fn status(status: u16) -> Self {
        Self::new(status, TEXT, format!("{}\n", reason(status)).into_bytes())
    }

    fn text(body: impl Into<String>) -> Self {
        Self::new(200, TEXT, body.into().into_bytes())
    }

    fn json(doc: &serde_json::Value) -> Self {
        Self::new(200, JSON, doc.to_string().into_bytes())
    }

    /// A directory listing: one entry a line, directories ending with `/`, no final newline.
    fn listing(entries: &[String]) -> Self {
        Self::text(entries.join("\n"))
    }
}

/// The reason phrase of the statuses we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Answers one request. `GET` and `HEAD` only (405 otherwise); HEAD gets GET's status, type
/// and length without the body. Query strings and empty segments are ignored; `..` is refused
/// with 400. Never panics.
pub fn answer(md: &Metadata, method: &str, target: &str) -> Answer {
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Answer::status(405),
    };
    let mut answer = match segments(target) {
        Some(segments) => route(md, &segments).unwrap_or_else(|| Answer::status(404)),
        None => Answer::status(400),
    };
    if head {
        answer.body = Vec::new();
    }
    answer
}

/// The path's segments: query and fragment dropped, an absolute-form `http://host` prefix
/// dropped, empty and `.` segments skipped. `None` for a path that is not absolute or that
/// has a `..` segment.
fn segments(target: &str) -> Option<Vec<&str>> {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let path = match path.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |slash| &rest[slash..]),
        None => path,
    };
    if !path.starts_with('/') {
        return None;
    }
    let mut out = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => return None,
            other => out.push(other),
        }
    }
    Some(out)
}

fn lines(entries: &[&str]) -> Vec<String> {
    entries.iter().map(|e| (*e).to_owned()).collect()
}

fn route(md: &Metadata, path: &[&str]) -> Option<Answer> {
    match path {
        [] => Some(Answer::listing(&lines(EC2_VERSIONS))),
        ["openstack", rest @ ..] => openstack(md, rest),
        [version, rest @ ..] if EC2_VERSIONS.contains(version) => ec2(md, rest),
        _ => None,
    }
}

fn openstack(md: &Metadata, path: &[&str]) -> Option<Answer> {
    let (version, file) = match path {
        [] => return Some(Answer::listing(&lines(OPENSTACK_VERSIONS))),
        [version] => (*version, None),
        [version, file] => (*version, Some(*file)),
        _ => return None,
    };
    if !OPENSTACK_VERSIONS.contains(&version) {
        return None;
    }
    let files = openstack_files(md, version);
    let Some(file) = file else {
        return Some(Answer::listing(&lines(&files)));
    };
    if !files.contains(&file) {
        return None;
    }
    Some(match file {
        "meta_data.json" => Answer::json(&md.openstack_meta_data()),
        "user_data" => Answer::new(200, OCTETS, md.user_data.clone()?),
        "network_data.json" => Answer::json(&md.openstack_network_data()),
        "vendor_data.json" | "vendor_data2.json" => Answer::json(&serde_json::json!({})),
        _ => return None,
    })
}

/// The files of one OpenStack version, each from the release that added it.
fn openstack_files(md: &Metadata, version: &str) -> Vec<&'static str> {
    // ISO dates order as strings, and "latest" sorts after every date.
    let since = |release: &str| version >= release;
    let mut files = vec!["meta_data.json"];
    if md.user_data.is_some() {
        files.push("user_data");
    }
    if since("2013-10-17") {
        files.push("vendor_data.json");
    }
    if since("2015-10-15") {
        files.push("network_data.json");
    }
    if since("2016-10-06") {
        files.push("vendor_data2.json");
    }
    files
}

fn ec2(md: &Metadata, path: &[&str]) -> Option<Answer> {
    match path {
        [] => {
            let mut entries = lines(&["dynamic/", "meta-data/"]);
            if md.user_data.is_some() {
                entries.push("user-data".into());
            }
            Some(Answer::listing(&entries))
        }
        ["user-data"] => Some(Answer::new(200, OCTETS, md.user_data.clone()?)),
        ["meta-data", rest @ ..] => ec2_meta_data(md, rest),
        ["dynamic"] => Some(Answer::listing(&lines(&["instance-identity/"]))),
        ["dynamic", "instance-identity"] => Some(Answer::listing(&lines(&["document"]))),
        ["dynamic", "instance-identity", "document"] => Some(Answer::json(&md.instance_identity())),
        _ => None,
    }
}

fn ec2_meta_data(md: &Metadata, path: &[&str]) -> Option<Answer> {
    match path {
        [] => {
            let mut entries = lines(&["ami-launch-index", "hostname", "instance-id"]);
            entries.push("local-hostname".into());
            if md.local_ipv4.is_some() {
                entries.push("local-ipv4".into());
            }
            if md.availability_zone.is_some() {
                entries.push("placement/".into());
            }
            if !md.public_keys.is_empty() {
                entries.push("public-keys/".into());
            }
            Some(Answer::listing(&entries))
        }
        ["ami-launch-index"] => Some(Answer::text("0")),
        ["hostname" | "local-hostname"] => Some(Answer::text(md.hostname.as_str())),
        ["instance-id"] => Some(Answer::text(md.instance_id.as_str())),
        ["local-ipv4"] => md.local_ipv4.map(|ip| Answer::text(ip.to_string())),
        ["placement"] => md
            .availability_zone
            .as_ref()
            .map(|_| Answer::listing(&lines(&["availability-zone"]))),
        ["placement", "availability-zone"] => md.availability_zone.as_deref().map(Answer::text),
        ["public-keys", rest @ ..] => ec2_public_keys(md, rest),
        _ => None,
    }
}

/// EC2's key tree: `public-keys/` lists `<i>=<name>`, `public-keys/<i>/` lists
/// `openssh-key`, and `public-keys/<i>/openssh-key` is the key.
fn ec2_public_keys(md: &Metadata, path: &[&str]) -> Option<Answer> {
    let keys = md.served_keys();
    if keys.is_empty() {
        return None;
    }
    let (index, leaf) = match path {
        [] => {
            let entries: Vec<String> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{i}={}", k.name))
                .collect();
            return Some(Answer::listing(&entries));
        }
        [index] => (*index, None),
        [index, leaf] => (*index, Some(*leaf)),
        _ => return None,
    };
    // only canonical indices: "0", "1", not "00" or "+1"
    let key = keys
        .iter()
        .enumerate()
        .find(|(i, _)| i.to_string() == index)
        .map(|(_, k)| k)?;
    match leaf {
        None => Some(Answer::listing(&lines(&["openssh-key"]))),
        Some("openssh-key") => Some(Answer::text(key.key)),
        Some(_) => None,
    }
}
