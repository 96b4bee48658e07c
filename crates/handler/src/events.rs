//! Kubernetes Events (core/v1) the node agent records on VMIs, with KubeVirt's virt-handler's
//! reasons and messages, so `kubectl describe vmi` and `kubectl get events` show what happened on
//! the node. Best effort: a failed event never fails the agent.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, ObjectMeta, PostParams};
use kuvirt_api::VirtualMachineInstance;

/// Who reports (KubeVirt's component name).
pub const COMPONENT: &str = "virt-handler";

/// What happened to a VMI on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmiEvent {
    /// A launcher was started for it.
    Created,
    /// Its guest runs.
    Started,
    Paused,
    Resumed,
    /// The agent asked the launcher for a graceful shutdown.
    ShuttingDown,
    /// The guest shut down.
    Stopped,
    /// The launcher or QEMU failed.
    Crashed,
    /// Starting its launcher failed (the message says why).
    SyncFailed(String),
    /// A migration of it started or is being aborted (the message says which).
    Migrating(String),
    /// This node listens for its migration.
    PreparingTarget(String),
    /// It arrived here (`Ok`), or its migration failed (`Err`, why).
    Migrated(Result<String, String>),
}

impl VmiEvent {
    /// KubeVirt's event reason (its `v1.EventType` names).
    pub fn reason(&self) -> &'static str {
        match self {
            VmiEvent::Created => "Created",
            VmiEvent::Started => "Started",
            VmiEvent::Paused => "Paused",
            VmiEvent::Resumed => "Resumed",
            VmiEvent::ShuttingDown => "ShuttingDown",
            VmiEvent::Stopped | VmiEvent::Crashed => "Stopped",
            VmiEvent::SyncFailed(_) => "SyncFailed",
            VmiEvent::Migrating(_) => "Migrating",
            VmiEvent::PreparingTarget(_) => "PreparingTarget",
            VmiEvent::Migrated(_) => "Migrated",
        }
    }

    /// virt-handler's message (pause and resume have none there: these are ours).
    pub fn message(&self) -> String {
        match self {
            VmiEvent::Created => "VirtualMachineInstance defined.".into(),
            VmiEvent::Started => "VirtualMachineInstance started.".into(),
            VmiEvent::Paused => "VirtualMachineInstance paused.".into(),
            VmiEvent::Resumed => "VirtualMachineInstance resumed.".into(),
            VmiEvent::ShuttingDown => "Signaled Graceful Shutdown".into(),
            VmiEvent::Stopped => "The VirtualMachineInstance was shut down.".into(),
            VmiEvent::Crashed => "The VirtualMachineInstance crashed.".into(),
            VmiEvent::SyncFailed(why) => why.clone(),
            VmiEvent::Migrating(m) | VmiEvent::PreparingTarget(m) => m.clone(),
            VmiEvent::Migrated(Ok(m) | Err(m)) => m.clone(),
        }
    }

    pub fn warning(&self) -> bool {
        matches!(
            self,
            VmiEvent::Crashed | VmiEvent::SyncFailed(_) | VmiEvent::Migrated(Err(_))
        )
    }
}

/// The VMI an event is about: uid and resourceVersion when known (a deleted VMI has none left).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Involved {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl From<&VirtualMachineInstance> for Involved {
    fn from(vmi: &VirtualMachineInstance) -> Involved {
        Involved {
            namespace: vmi
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: vmi.metadata.name.clone().unwrap_or_default(),
            uid: vmi.metadata.uid.clone(),
            resource_version: vmi.metadata.resource_version.clone(),
        }
    }
}

/// The Event for `what` on `about`, reported from `node` (pure).
pub fn event(about: &Involved, node: &str, what: &VmiEvent) -> Event {
    let now = k8s_openapi::jiff::Timestamp::now();
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", about.name)),
            namespace: Some(about.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("kubevirt.io/v1".into()),
            kind: Some("VirtualMachineInstance".into()),
            name: Some(about.name.clone()),
            namespace: Some(about.namespace.clone()),
            uid: about.uid.clone(),
            resource_version: about.resource_version.clone(),
            ..ObjectReference::default()
        },
        reason: Some(what.reason().into()),
        message: Some(what.message()),
        type_: Some(if what.warning() { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(node.into()),
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(node.into()),
        ..Event::default()
    }
}

/// Records `what` on `about`.
pub async fn record(client: &kube::Client, node: &str, about: &Involved, what: VmiEvent) {
    let events: Api<Event> = Api::namespaced(client.clone(), &about.namespace);
    if let Err(e) = events
        .create(&PostParams::default(), &event(about, node, &what))
        .await
    {
        tracing::debug!(error = %e, reason = what.reason(), "recording an event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_the_vmi_and_the_node() {
        let about = Involved {
            namespace: "demo".into(),
            name: "testvm".into(),
            uid: Some("u-1".into()),
            resource_version: Some("42".into()),
        };
        let e = event(&about, "node-a", &VmiEvent::Started);
        assert_eq!(e.reason.as_deref(), Some("Started"));
        assert_eq!(
            e.message.as_deref(),
            Some("VirtualMachineInstance started.")
        );
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        let src = e.source.unwrap();
        assert_eq!(
            (src.component.as_deref(), src.host.as_deref()),
            (Some("virt-handler"), Some("node-a"))
        );
        let o = e.involved_object;
        assert_eq!(o.kind.as_deref(), Some("VirtualMachineInstance"));
        assert_eq!(o.uid.as_deref(), Some("u-1"));
        assert_eq!(o.resource_version.as_deref(), Some("42"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("demo"));

        let crashed = event(&about, "node-a", &VmiEvent::Crashed);
        assert_eq!(
            (crashed.reason.as_deref(), crashed.type_.as_deref()),
            (Some("Stopped"), Some("Warning"))
        );
        assert_eq!(
            VmiEvent::ShuttingDown.message(),
            "Signaled Graceful Shutdown"
        );
    }
}
