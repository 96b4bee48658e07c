//! PATCH: decodes the patch by its content type, applies it to the current object with
//! `kuvirt_apimachinery::patch`, and writes the result through the ordinary update path,
//! retrying when the object changed underneath (unless the patch pinned a resourceVersion).

use std::collections::HashMap;

use axum::http::HeaderMap;
use kuvirt_apimachinery::patch::{KeyTable, PatchType, apply, apply_patch};
use kuvirt_store::Store;
use serde_json::Value;

use crate::error::ApiError;
use crate::objects::{self, Part, WriteOptions};
use crate::path::Target;

/// How often a patch is recomputed when a concurrent write wins.
const RETRIES: usize = 5;

#[allow(clippy::too_many_arguments)]
pub async fn patch(
    store: &Store,
    t: &Target,
    name: &str,
    part: Part,
    headers: &HeaderMap,
    body: &[u8],
    _q: &HashMap<String, String>,
    wo: &WriteOptions,
) -> Result<Value, ApiError> {
    let ct = crate::http::content_type(headers);
    let kind =
        PatchType::from_content_type(&ct).ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
    let keys = KeyTable::for_kind(t.rt.group, t.rt.kind);
    if kind == PatchType::StrategicMerge && !t.rt.strategic_merge {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    if kind == PatchType::Apply {
        return server_side_apply(store, t, name, part, body, &keys, wo).await;
    }
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding the patch: {e}")))?;
    // A patch that names a resourceVersion is conditional on it: no retries then.
    let pinned = doc
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .is_some();
    let mut last = None;
    for _ in 0..RETRIES {
        let current = objects::get(store, t, name).await?;
        let rv = crate::meta::resource_version(&current);
        let patched = apply_patch(kind, &current, &doc, &keys)
            .map_err(|e| ApiError::from_status(&e.to_status()))?;
        let expected = if pinned {
            crate::meta::resource_version(&patched)
        } else {
            rv
        };
        match objects::update(store, t, name, patched, part, expected, wo).await {
            Err(e) if e.code == 409 && !pinned => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| ApiError::conflict(t.rt, name)))
}

/// Server-side apply: merges the applied configuration into the live object (or creates it),
/// tracking field ownership and refusing conflicts unless forced.
async fn server_side_apply(
    store: &Store,
    t: &Target,
    name: &str,
    part: Part,
    body: &[u8],
    keys: &KeyTable,
    wo: &WriteOptions,
) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the apply configuration is not UTF-8"))?;
    let mut applied: Value = serde_saphyr::from_str(text).map_err(|e| {
        ApiError::bad_request(format!(
            "error decoding the apply configuration: {}",
            e.to_string().lines().next().unwrap_or_default()
        ))
    })?;
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "the apply configuration must be an object",
        ));
    }
    if wo.manager.is_empty() || wo.manager == "unknown" {
        return Err(ApiError::bad_request(
            "PATCH requests of type application/apply-patch+yaml must specify a fieldManager",
        ));
    }
    if t.rt.status
        && part == Part::Main
        && let Some(o) = applied.as_object_mut()
    {
        o.remove("status");
    }
    let mut last = None;
    for _ in 0..RETRIES {
        let live = match objects::get(store, t, name).await {
            Ok(v) => Some(v),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let mut merged = apply(
            live.as_ref(),
            &applied,
            &wo.manager,
            wo.force,
            keys,
            &crate::meta::now(),
        )
        .map_err(|e| ApiError::from_status(&e.to_status()))?;
        let opts = WriteOptions {
            managed: true,
            ..wo.clone()
        };
        let result = match &live {
            // Applying to /status needs the object to exist.
            None if part == Part::Status => return Err(ApiError::not_found(t.rt, name)),
            None => {
                if let Some(m) = merged
                    .pointer_mut("/metadata")
                    .and_then(Value::as_object_mut)
                {
                    m.insert("name".into(), Value::String(name.to_string()));
                }
                objects::create(store, t, merged, &opts).await
            }
            Some(l) => {
                let rv = crate::meta::resource_version(l);
                if let Some(m) = merged
                    .pointer_mut("/metadata")
                    .and_then(Value::as_object_mut)
                {
                    m.insert(
                        "resourceVersion".into(),
                        Value::String(rv.unwrap_or(0).to_string()),
                    );
                }
                objects::update(store, t, name, merged, part, rv, &opts).await
            }
        };
        match result {
            Err(e) if e.code == 409 && e.reason != "AlreadyExists" && e.reason != "Conflict" => {
                return Err(e);
            }
            Err(e) if e.code == 409 => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| ApiError::conflict(t.rt, name)))
}
