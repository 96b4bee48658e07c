//! Watch: a chunked stream of `{"type": …, "object": …}` lines from the store's history and live
//! events, with selectors, bookmarks, `timeoutSeconds`, and 410 (as an ERROR event) when the
//! requested resourceVersion is compacted away.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kuvirt_store::Store;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::http::{Selectors, stream_body};
use crate::objects;
use crate::path::Target;

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);
/// The longest a watch runs when the client names no timeout (kube-apiserver: 30–60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// One watch line around an object's stored JSON bytes.
fn event_line(ty: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + ty.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(ty.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// How many recent events' objects stay decoded for the watches that need them.
const DECODED_KEPT: usize = 64;

/// The objects of recent events, decoded once for every watch whose selector needs to look at
/// them (each node agent's watches select by node: without this, each of them decoded every
/// event of its resource).
#[derive(Default)]
pub struct Decoded {
    recent: Mutex<Recent>,
}

/// Decoded objects by revision, and the revisions oldest first.
#[derive(Default)]
struct Recent {
    by_revision: HashMap<u64, Arc<Value>>,
    order: VecDeque<u64>,
}

impl Decoded {
    /// The object of the event with `revision` (its bytes `raw`), decoded at most once while
    /// the event is recent.
    fn get(&self, revision: u64, raw: &[u8]) -> Option<Arc<Value>> {
        let lock = || self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = lock().by_revision.get(&revision) {
            return Some(v.clone());
        }
        let v = Arc::new(serde_json::from_slice::<Value>(raw).ok()?);
        let mut r = lock();
        if r.by_revision.insert(revision, v.clone()).is_none() {
            r.order.push_back(revision);
            while r.order.len() > DECODED_KEPT {
                if let Some(old) = r.order.pop_front() {
                    r.by_revision.remove(&old);
                }
            }
        }
        Some(v)
    }
}

pub async fn serve(
    store: Store,
    decoded: Arc<Decoded>,
    t: Target,
    sel: Selectors,
    q: &HashMap<String, String>,
    table: bool,
) -> Result<Response, ApiError> {
    let rv = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    // 0 or absent means the server's default; anything longer is capped to it.
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map_or(DEFAULT_TIMEOUT, |t| {
            Duration::from_secs(t).min(DEFAULT_TIMEOUT)
        });
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let q = q.clone();
    // Without a resourceVersion, the client first gets the current objects as ADDED events.
    let (initial, from) = match rv {
        Some(rv) => (Vec::new(), rv),
        None => {
            let page = objects::list(&store, &t, None, None, &|v| sel.matches(v)).await?;
            (page.items, page.revision)
        }
    };
    let ns = (!t.namespace.is_empty()).then(|| t.namespace.clone());
    let watch = store.watch(&t.rt.store_key(), ns.as_deref(), from).await;
    tokio::spawn(async move {
        let send = |ty: &str, obj: Value| {
            let obj = if table && ty != "ERROR" && ty != "BOOKMARK" {
                crate::table::table(t.rt, &[obj], None, &q)
            } else {
                obj
            };
            let mut line = json!({"type": ty, "object": obj}).to_string();
            line.push('\n');
            tx.send(Bytes::from(line))
        };
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                let _ = send("ERROR", ApiError::from(e).status()).await;
                return;
            }
        };
        for obj in initial {
            if send("ADDED", obj).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                ev = watch.next() => {
                    let ev = match ev {
                        None => return,
                        Some(Err(e)) => {
                            let _ = send("ERROR", ApiError::from(e).status()).await;
                            return;
                        }
                        Some(Ok(ev)) => ev,
                    };
                    // The stored bytes are the object as served: without a table or a selector
                    // to check they go out as they are, not decoded and encoded again for each
                    // watcher.
                    let sent = if table || !sel.is_empty() {
                        let Some(obj) = decoded.get(ev.revision, &ev.value) else { continue };
                        if !sel.matches(&obj) {
                            continue;
                        }
                        if table {
                            send(ev.kind.as_str(), Value::clone(&obj)).await
                        } else {
                            tx.send(event_line(ev.kind.as_str(), &ev.value)).await
                        }
                    } else {
                        tx.send(event_line(ev.kind.as_str(), &ev.value)).await
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                _ = tick.tick(), if bookmarks => {
                    let mark = json!({
                        "kind": t.rt.kind,
                        "apiVersion": t.rt.api_version(),
                        "metadata": {"resourceVersion": watch.revision().to_string()},
                    });
                    if send("BOOKMARK", mark).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        stream_body(rx),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_recent_event_is_decoded_once() {
        let d = Decoded::default();
        let a = d.get(1, br#"{"a":1}"#).unwrap();
        // The same revision is not decoded again (these bytes would not decode).
        assert!(Arc::ptr_eq(&a, &d.get(1, b"garbage").unwrap()));
        assert!(d.get(2, b"garbage").is_none());
        for rev in 2..=(DECODED_KEPT as u64 + 1) {
            d.get(rev, b"{}").unwrap();
        }
        // Revision 1 has been forgotten.
        assert!(d.get(1, b"garbage").is_none());
    }

    #[test]
    fn an_event_line_wraps_the_stored_bytes() {
        let stored = br#"{"kind":"Pod","metadata":{"name":"a\nb"}}"#;
        let line = event_line("MODIFIED", stored);
        assert!(line.ends_with(b"}\n"));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"type": "MODIFIED", "object": {"kind": "Pod", "metadata": {"name": "a\nb"}}})
        );
    }
}
