//! Unit tests: every route's status and bytes, path normalisation, HTTP head parsing.

#![allow(clippy::unwrap_used)] // tests fail loudly

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::http::{HeadError, Version, head_len, leading_blank, parse_head, response_head};
use super::*;

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA+1 alice@example";
const KEY_B: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ+2 bob@example";

fn full() -> Metadata {
    Metadata {
        uuid: "5d307ca9-b3ef-428c-8861-06e72d69f223".into(),
        instance_id: "testvm.default".into(),
        name: "testvm".into(),
        namespace: "default".into(),
        hostname: "testvm".into(),
        local_ipv4: Some(Ipv4Addr::new(10, 0, 2, 2)),
        public_keys: vec![
            ("alice".into(), format!("{KEY_A}\n")),
            ("bob".into(), KEY_B.into()),
        ],
        user_data: Some(b"#cloud-config\nhostname: testvm\n".to_vec()),
        network_data: Some(json!({"links": [{"id": "eth0"}], "networks": [], "services": []})),
        availability_zone: Some("zone-a".into()),
    }
}

fn bare() -> Metadata {
    Metadata {
        uuid: "u".into(),
        instance_id: "vm.ns".into(),
        name: "vm".into(),
        namespace: "ns".into(),
        hostname: "vm".into(),
        ..Metadata::default()
    }
}

fn get(md: &Metadata, path: &str) -> (u16, String) {
    let a = answer(md, "GET", path);
    assert_eq!(a.content_length, a.body.len(), "{path}");
    (a.status, String::from_utf8(a.body).unwrap())
}

fn ok(md: &Metadata, path: &str) -> String {
    let (status, body) = get(md, path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn json_at(md: &Metadata, path: &str) -> Value {
    let a = answer(md, "GET", path);
    assert_eq!(a.status, 200, "{path}");
    assert_eq!(a.content_type, "application/json", "{path}");
    serde_json::from_slice(&a.body).unwrap()
}

fn status(md: &Metadata, path: &str) -> u16 {
    answer(md, "GET", path).status
}

#[test]
fn openstack_version_listing() {
    let want = "2012-08-10\n2013-04-04\n2013-10-17\n2015-10-15\n2016-06-30\n2016-10-06\n\
                2017-02-22\n2018-08-27\nlatest";
    assert_eq!(ok(&full(), "/openstack"), want);
    assert_eq!(ok(&full(), "/openstack/"), want);
}

#[test]
fn openstack_file_listings_follow_the_release() {
    let md = full();
    assert_eq!(
        ok(&md, "/openstack/latest/"),
        "meta_data.json\nuser_data\nvendor_data.json\nnetwork_data.json\nvendor_data2.json"
    );
    assert_eq!(
        ok(&md, "/openstack/2012-08-10"),
        "meta_data.json\nuser_data"
    );
    assert_eq!(
        ok(&md, "/openstack/2015-10-15/"),
        "meta_data.json\nuser_data\nvendor_data.json\nnetwork_data.json"
    );
    assert_eq!(
        ok(&bare(), "/openstack/2018-08-27/"),
        "meta_data.json\nvendor_data.json\nnetwork_data.json\nvendor_data2.json"
    );
    // files a release did not have are not there
    assert_eq!(status(&md, "/openstack/2012-08-10/network_data.json"), 404);
    assert_eq!(status(&md, "/openstack/2015-10-15/vendor_data2.json"), 404);
}

#[test]
fn openstack_meta_data_json() {
    let want = json!({
        "uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223",
        "instance_id": "testvm.default",
        "name": "testvm",
        "hostname": "testvm",
        "launch_index": 0,
        "project_id": "default",
        "public_keys": {"alice": KEY_A, "bob": KEY_B},
        "keys": [
            {"name": "alice", "type": "ssh", "data": KEY_A},
            {"name": "bob", "type": "ssh", "data": KEY_B},
        ],
        "meta": {},
        "devices": [],
        "availability_zone": "zone-a",
    });
    for version in OPENSTACK_VERSIONS {
        let path = format!("/openstack/{version}/meta_data.json");
        assert_eq!(json_at(&full(), &path), want, "{path}");
    }
    // without a zone or keys
    let doc = json_at(&bare(), "/openstack/latest/meta_data.json");
    assert_eq!(doc.get("availability_zone"), None);
    assert_eq!(doc["public_keys"], json!({}));
    assert_eq!(doc["keys"], json!([]));
    assert_eq!(doc["uuid"], "u");
}

#[test]
fn openstack_user_data_is_raw_and_404_when_none() {
    let mut md = full();
    md.user_data = Some(vec![0, 159, 146, 150, b'\n']);
    let a = answer(&md, "GET", "/openstack/latest/user_data");
    assert_eq!(
        (a.status, a.content_type, a.body),
        (
            200,
            "application/octet-stream",
            vec![0, 159, 146, 150, b'\n']
        )
    );
    assert_eq!(status(&bare(), "/openstack/latest/user_data"), 404);
}

#[test]
fn openstack_network_and_vendor_data() {
    assert_eq!(
        json_at(&full(), "/openstack/latest/network_data.json"),
        json!({"links": [{"id": "eth0"}], "networks": [], "services": []})
    );
    assert_eq!(
        ok(&bare(), "/openstack/latest/network_data.json"),
        r#"{"links":[],"networks":[],"services":[]}"#
    );
    assert_eq!(ok(&full(), "/openstack/latest/vendor_data.json"), "{}");
    assert_eq!(ok(&full(), "/openstack/2016-10-06/vendor_data2.json"), "{}");
}

#[test]
fn openstack_unknown_versions_and_files_404() {
    for path in [
        "/openstack/2099-01-01/",
        "/openstack/2099-01-01/meta_data.json",
        "/openstack/LATEST/meta_data.json",
        "/openstack/latest/password",
        "/openstack/latest/meta_data.json/x",
        "/openstack/latest/a/b/c",
    ] {
        assert_eq!(status(&full(), path), 404, "{path}");
    }
}

#[test]
fn ec2_root_and_version_listings() {
    assert_eq!(
        ok(&full(), "/"),
        "1.0\n2007-01-19\n2007-03-01\n2007-08-29\n2007-10-10\n2007-12-15\n2008-02-01\n\
         2008-09-01\n2009-04-04\nlatest"
    );
    assert_eq!(ok(&full(), "/latest/"), "dynamic/\nmeta-data/\nuser-data");
    assert_eq!(ok(&bare(), "/2009-04-04"), "dynamic/\nmeta-data/");
    // cloud-init probes these first and falls back to 2009-04-04 on 404
    for version in ["2016-09-02", "2018-09-24", "2021-03-23"] {
        assert_eq!(
            status(&full(), &format!("/{version}/meta-data/instance-id")),
            404
        );
    }
}

#[test]
fn ec2_meta_data_listing() {
    assert_eq!(
        ok(&full(), "/latest/meta-data/"),
        "ami-launch-index\nhostname\ninstance-id\nlocal-hostname\nlocal-ipv4\nplacement/\n\
         public-keys/"
    );
    assert_eq!(
        ok(&bare(), "/2009-04-04/meta-data"),
        "ami-launch-index\nhostname\ninstance-id\nlocal-hostname"
    );
}

#[test]
fn ec2_meta_data_leaves() {
    let md = full();
    for version in EC2_VERSIONS {
        let base = format!("/{version}/meta-data");
        assert_eq!(ok(&md, &format!("{base}/instance-id")), "testvm.default");
        assert_eq!(ok(&md, &format!("{base}/hostname")), "testvm");
        assert_eq!(ok(&md, &format!("{base}/local-hostname")), "testvm");
        assert_eq!(ok(&md, &format!("{base}/local-ipv4")), "10.0.2.2");
        assert_eq!(ok(&md, &format!("{base}/ami-launch-index")), "0");
        assert_eq!(ok(&md, &format!("{base}/placement/")), "availability-zone");
        assert_eq!(
            ok(&md, &format!("{base}/placement/availability-zone")),
            "zone-a"
        );
    }
    let md = bare();
    for path in [
        "/latest/meta-data/local-ipv4",
        "/latest/meta-data/placement/",
        "/latest/meta-data/placement/availability-zone",
        "/latest/meta-data/public-keys/",
        "/latest/meta-data/public-keys/0/openssh-key",
        "/latest/meta-data/ami-id",
        "/latest/meta-data/instance-id/x",
    ] {
        assert_eq!(status(&md, path), 404, "{path}");
    }
}

#[test]
fn ec2_public_keys() {
    let md = full();
    assert_eq!(ok(&md, "/latest/meta-data/public-keys"), "0=alice\n1=bob");
    assert_eq!(ok(&md, "/latest/meta-data/public-keys/0/"), "openssh-key");
    assert_eq!(
        ok(&md, "/latest/meta-data/public-keys/0/openssh-key"),
        KEY_A
    );
    assert_eq!(
        ok(&md, "/2009-04-04/meta-data/public-keys/1/openssh-key"),
        KEY_B
    );
    for path in [
        "/latest/meta-data/public-keys/2/openssh-key",
        "/latest/meta-data/public-keys/00/openssh-key",
        "/latest/meta-data/public-keys/+1/openssh-key",
        "/latest/meta-data/public-keys/alice/openssh-key",
        "/latest/meta-data/public-keys/0/other",
        "/latest/meta-data/public-keys/0/openssh-key/x",
    ] {
        assert_eq!(status(&md, path), 404, "{path}");
    }
}

#[test]
fn key_names_are_made_unique_and_line_safe() {
    let mut md = bare();
    md.public_keys = vec![
        ("dup".into(), "k0".into()),
        ("dup".into(), "k1".into()),
        (String::new(), "k2".into()),
        ("a\nb=c".into(), "k3".into()),
    ];
    assert_eq!(
        ok(&md, "/latest/meta-data/public-keys/"),
        "0=dup\n1=dup-1\n2=key-2\n3=a_b_c"
    );
    let doc = json_at(&md, "/openstack/latest/meta_data.json");
    assert_eq!(
        doc["public_keys"],
        json!({"dup": "k0", "dup-1": "k1", "key-2": "k2", "a_b_c": "k3"})
    );
}

#[test]
fn ec2_user_data_and_identity() {
    let a = answer(&full(), "GET", "/latest/user-data");
    assert_eq!(
        (a.status, a.content_type, a.body.as_slice()),
        (
            200,
            "application/octet-stream",
            &b"#cloud-config\nhostname: testvm\n"[..]
        )
    );
    assert_eq!(status(&bare(), "/2009-04-04/user-data"), 404);
    assert_eq!(ok(&full(), "/latest/dynamic/"), "instance-identity/");
    assert_eq!(ok(&full(), "/latest/dynamic/instance-identity"), "document");
    assert_eq!(
        json_at(&full(), "/latest/dynamic/instance-identity/document"),
        json!({"instanceId": "testvm.default", "privateIp": "10.0.2.2",
               "availabilityZone": "zone-a"})
    );
    assert_eq!(
        json_at(&bare(), "/latest/dynamic/instance-identity/document"),
        json!({"instanceId": "vm.ns"})
    );
}

#[test]
fn paths_are_normalised() {
    let md = full();
    for path in [
        "//latest//meta-data///instance-id",
        "/latest/meta-data/instance-id/",
        "/latest/meta-data/instance-id?x=1&y=/..",
        "/latest/./meta-data/instance-id#frag",
        "http://169.254.169.254/latest/meta-data/instance-id",
    ] {
        assert_eq!(ok(&md, path), "testvm.default", "{path}");
    }
    assert_eq!(ok(&md, "http://169.254.169.254"), ok(&md, "/"));
}

#[test]
fn dot_dot_and_relative_paths_are_refused() {
    let md = full();
    for path in [
        "/latest/../openstack/latest/meta_data.json",
        "/..",
        "/openstack/latest/..",
        "latest/meta-data/instance-id",
        "*",
        "",
    ] {
        assert_eq!(status(&md, path), 400, "{path}");
    }
    // encoded dots are just an unknown name
    assert_eq!(status(&md, "/latest/%2e%2e/openstack"), 404);
}

#[test]
fn unknown_paths_404() {
    for path in [
        "/foo",
        "/latest/meta-data/foo",
        "/latest/foo",
        "/openstack2",
        "/2009-04-05/",
    ] {
        assert_eq!(status(&full(), path), 404, "{path}");
    }
}

#[test]
fn head_has_get_status_and_length_without_body() {
    let md = full();
    for path in [
        "/latest/meta-data/instance-id",
        "/openstack/latest/meta_data.json",
        "/nope",
    ] {
        let get = answer(&md, "GET", path);
        let head = answer(&md, "HEAD", path);
        assert_eq!(head.status, get.status);
        assert_eq!(head.content_type, get.content_type);
        assert_eq!(head.content_length, get.body.len());
        assert!(head.body.is_empty());
    }
}

#[test]
fn other_methods_405() {
    for method in ["POST", "PUT", "DELETE", "get", "OPTIONS", ""] {
        let a = answer(&full(), method, "/latest/meta-data/instance-id");
        assert_eq!(a.status, 405, "{method}");
    }
}

#[test]
fn answer_never_panics_on_odd_input() {
    let md = full();
    let odd = [
        "/\u{0}",
        "/ü/ß",
        "/%",
        "?",
        "#",
        "/?#",
        "http://",
        "http://x",
        "/openstack/\u{feff}",
        "/latest/meta-data/public-keys/18446744073709551616/openssh-key",
    ];
    for path in odd {
        for method in ["GET", "HEAD", "X"] {
            let _ = answer(&md, method, path);
        }
    }
    let long = "/a".repeat(100_000);
    assert_eq!(status(&md, &long), 404);
}

#[test]
fn head_framing() {
    assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
    assert_eq!(head_len(b"GET / HTTP/1.1\nHost: x\n\n"), Some(24));
    assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    assert_eq!(head_len(b""), None);
    assert_eq!(leading_blank(b"\r\n\r\nGET"), 4);
}

#[test]
fn head_parsing() {
    let head = parse_head(b"GET /latest/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(
        (head.method, head.target, head.version, head.keep_alive),
        ("GET", "/latest/", Version::Http11, true)
    );
    let close = parse_head(b"GET / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n").unwrap();
    assert!(!close.keep_alive);
    let old = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!((old.version, old.keep_alive), (Version::Http10, false));
    let old_ka = parse_head(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").unwrap();
    assert!(old_ka.keep_alive);
    let body = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").unwrap();
    assert!(!body.keep_alive);
    let chunked = parse_head(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    assert!(!chunked.keep_alive);
    let empty_body = parse_head(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(empty_body.keep_alive);
}

#[test]
fn bad_heads() {
    for head in [
        &b"GET /\r\n\r\n"[..],
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 x\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET / FTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\n Folded: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(
            parse_head(head),
            Err(HeadError::Malformed),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
    assert_eq!(
        parse_head(b"PRI * HTTP/2.0\r\n\r\n"),
        Err(HeadError::Version)
    );
}

#[test]
fn response_heads() {
    let a = answer(&full(), "GET", "/latest/meta-data/hostname");
    assert_eq!(
        String::from_utf8(response_head(&a, Version::Http11, true)).unwrap(),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 6\r\n\
         Connection: keep-alive\r\n\r\n"
    );
    let a = answer(&full(), "POST", "/");
    let head = String::from_utf8(response_head(&a, Version::Http10, false)).unwrap();
    assert!(
        head.starts_with("HTTP/1.0 405 Method Not Allowed\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nAllow: GET, HEAD\r\n"), "{head}");
    assert!(head.ends_with("\r\nConnection: close\r\n\r\n"), "{head}");
}
