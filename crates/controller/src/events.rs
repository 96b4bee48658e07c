//! Kubernetes Events (core/v1) for lifecycle steps, so `kubectl describe` and `kubectl get events`
//! tell what happened to a VM and why. Best effort: a failed event never fails a reconcile.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, ObjectMeta, PostParams};

/// Who reports (KubeVirt's component names).
pub const CONTROLLER: &str = "virtualmachine-controller";

/// What an event is about.
pub struct Subject<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: Option<&'a str>,
}

/// Records a Normal (`warning: false`) or Warning event.
pub async fn record(
    client: &kube::Client,
    about: &Subject<'_>,
    warning: bool,
    reason: &str,
    message: &str,
) {
    let now = k8s_openapi::jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", about.name)),
            namespace: Some(about.namespace.to_string()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("kubevirt.io/v1".into()),
            kind: Some(about.kind.into()),
            name: Some(about.name.into()),
            namespace: Some(about.namespace.into()),
            uid: about.uid.map(String::from),
            ..ObjectReference::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some(CONTROLLER.into()),
            host: None,
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        reporting_component: Some(CONTROLLER.into()),
        reporting_instance: Some(CONTROLLER.into()),
        action: Some(reason.into()),
        ..Event::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), about.namespace);
    if let Err(e) = events.create(&PostParams::default(), &event).await {
        tracing::debug!(error = %e, "recording an event failed");
    }
}
