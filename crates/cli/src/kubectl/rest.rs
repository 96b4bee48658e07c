//! The REST calls the verbs make, as raw requests through the kube-rs client (so a Table can
//! be asked for and any type handled as JSON).

use anyhow::Result;
use kube::api::{DeleteParams, GetParams, ListParams, Patch, PatchParams, PropagationPolicy};
use serde_json::Value;

use super::discovery::Resource;

/// What kubectl asks for when it prints a table.
const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

fn request(res: &Resource, ns: Option<&str>) -> kube::core::Request {
    kube::core::Request::new(res.url(ns))
}

/// GET one object, or its Table when `table`.
pub async fn get(
    client: &kube::Client,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    table: bool,
) -> Result<Value> {
    let mut req = request(res, ns).get(name, &GetParams::default())?;
    if table {
        req.headers_mut().insert("accept", TABLE_ACCEPT.parse()?);
    }
    Ok(client.request(req).await?)
}

/// LIST a collection (all namespaces when `ns` is None), or its Table when `table`.
pub async fn list(
    client: &kube::Client,
    res: &Resource,
    ns: Option<&str>,
    selector: Option<&str>,
    table: bool,
) -> Result<Value> {
    let mut lp = ListParams::default();
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    let mut req = request(res, ns).list(&lp)?;
    if table {
        req.headers_mut().insert("accept", TABLE_ACCEPT.parse()?);
    }
    Ok(client.request(req).await?)
}

/// DELETE one object with the given propagation.
pub async fn delete(
    client: &kube::Client,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    propagation: &PropagationPolicy,
) -> Result<()> {
    let dp = DeleteParams {
        propagation_policy: Some(propagation.clone()),
        ..DeleteParams::default()
    };
    let req = request(res, ns).delete(name, &dp)?;
    let _: Value = client.request(req).await?;
    Ok(())
}

/// Server-side apply of `obj` with field manager "kuvirt".
pub async fn apply(
    client: &kube::Client,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    obj: &Value,
    force: bool,
) -> Result<Value> {
    let mut pp = PatchParams::apply("kuvirt");
    if force {
        pp = pp.force();
    }
    let req = request(res, ns).patch(name, &pp, &Patch::Apply(obj))?;
    Ok(client.request(req).await?)
}

/// Whether `e` is the server saying the object does not exist.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 404)
}
