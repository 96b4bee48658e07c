//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`), as
//! kubectl's typed clients send them, decoded into the JSON the JSON API carries.
//!
//! A body is the magic `k8s\0` followed by a `runtime.Unknown` (typeMeta=1 {apiVersion=1, kind=2},
//! raw=2, contentEncoding=3, contentType=4); `raw` is the object, decoded with the hand-written
//! schemas below (field numbers from Kubernetes' `generated.proto` files). Only the kinds kubectl's
//! `create` subcommands and `delete` send are known; anything else is `UnknownKind` (415).

use base64::Engine;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The media type this module decodes.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    #[error("protobuf body does not start with the k8s magic")]
    NoMagic,
    #[error("protobuf body is truncated")]
    Truncated,
    #[error("protobuf varint is longer than 10 bytes")]
    VarintTooLong,
    #[error("protobuf length {0} runs past the end of the body")]
    Length(u64),
    #[error("protobuf field number 0")]
    FieldZero,
    #[error("protobuf wire type {0} is not supported")]
    WireType(u8),
    #[error("protobuf field {field} of {message} has wire type {wire}, expected {expected}")]
    WrongWireType {
        message: &'static str,
        field: u32,
        wire: u8,
        expected: u8,
    },
    #[error("protobuf string in field {field} of {message} is not UTF-8")]
    Utf8 { message: &'static str, field: u32 },
    #[error("protobuf timestamp {0} is out of range")]
    Time(i64),
    #[error("protobuf fieldsV1 is not JSON")]
    FieldsV1,
    #[error("protobuf content encoding {0:?} is not supported")]
    ContentEncoding(String),
    #[error("protobuf body is {found}, expected {expected}")]
    KindMismatch { found: String, expected: String },
    #[error("protobuf decoding of {0} is not supported")]
    UnknownKind(String),
}

impl From<ProtobufError> for ApiError {
    fn from(e: ProtobufError) -> Self {
        match e {
            ProtobufError::UnknownKind(_) => ApiError::unsupported_media_type(MEDIA_TYPE),
            other => ApiError::bad_request(format!("error decoding the request body: {other}")),
        }
    }
}

// ---- the wire reader ----------------------------------------------------------------------------

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A bounds-checked cursor over protobuf bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// One field's payload.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(ProtobufError::Truncated)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtobufError::VarintTooLong)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ProtobufError> {
        let left = self.buf.len() - self.pos;
        let n_usize = usize::try_from(n).map_err(|_| ProtobufError::Length(n))?;
        if n_usize > left {
            return Err(ProtobufError::Length(n));
        }
        let s = &self.buf[self.pos..self.pos + n_usize];
        self.pos += n_usize;
        Ok(s)
    }

    /// The next field: its number, wire type and payload (fixed-width payloads are skipped).
    fn field(&mut self) -> Result<(u32, u8, Wire<'a>), ProtobufError> {
        let key = self.varint()?;
        let wire = (key & 7) as u8;
        let num = u32::try_from(key >> 3).map_err(|_| ProtobufError::Truncated)?;
        if num == 0 {
            return Err(ProtobufError::FieldZero);
        }
        let payload = match wire {
            VARINT => Wire::Varint(self.varint()?),
            LEN => {
                let n = self.varint()?;
                Wire::Bytes(self.take(n)?)
            }
            FIXED64 => {
                self.take(8)?;
                Wire::Fixed
            }
            FIXED32 => {
                self.take(4)?;
                Wire::Fixed
            }
            w => return Err(ProtobufError::WireType(w)),
        };
        Ok((num, wire, payload))
    }
}

// ---- schemas ------------------------------------------------------------------------------------

/// How a field's payload becomes JSON.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    Int32,
    Int64,
    Msg(&'static Message),
    MapStr,
    /// map<string, bytes>, base64 in JSON (Secret.data, ConfigMap.binaryData).
    MapBytes,
    IntOrString,
    Time,
    /// FieldsV1: raw JSON bytes.
    RawJson,
}

/// Whether a zero value (empty string, 0, false, empty message) still appears in JSON: true for
/// Go pointer fields (set means present) and for fields without `omitempty`.
#[derive(Clone, Copy, PartialEq)]
enum Zero {
    Omit,
    Keep,
}

struct Field {
    num: u32,
    name: &'static str,
    ty: Ty,
    repeated: bool,
    zero: Zero,
}

struct Message {
    name: &'static str,
    fields: &'static [Field],
}

const fn f(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
        zero: Zero::Omit,
    }
}

/// A Go pointer field, or one without `omitempty`: present even when zero.
const fn p(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
        zero: Zero::Keep,
    }
}

const fn r(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: true,
        zero: Zero::Omit,
    }
}

use Ty::{Bool, Int32, Int64, IntOrString, MapBytes, MapStr, Msg, RawJson, Str, Time};

static OWNER_REFERENCE: Message = Message {
    name: "OwnerReference",
    fields: &[
        p(1, "kind", Str),
        p(3, "name", Str),
        p(4, "uid", Str),
        p(5, "apiVersion", Str),
        p(6, "controller", Bool),
        p(7, "blockOwnerDeletion", Bool),
    ],
};

static FIELDS_V1: Message = Message {
    name: "FieldsV1",
    fields: &[],
};

static MANAGED_FIELDS_ENTRY: Message = Message {
    name: "ManagedFieldsEntry",
    fields: &[
        f(1, "manager", Str),
        f(2, "operation", Str),
        f(3, "apiVersion", Str),
        f(4, "time", Time),
        f(6, "fieldsType", Str),
        f(7, "fieldsV1", RawJson),
        f(8, "subresource", Str),
    ],
};

static OBJECT_META: Message = Message {
    name: "ObjectMeta",
    fields: &[
        f(1, "name", Str),
        f(2, "generateName", Str),
        f(3, "namespace", Str),
        f(4, "selfLink", Str),
        f(5, "uid", Str),
        f(6, "resourceVersion", Str),
        f(7, "generation", Int64),
        f(8, "creationTimestamp", Time),
        f(9, "deletionTimestamp", Time),
        p(10, "deletionGracePeriodSeconds", Int64),
        f(11, "labels", MapStr),
        f(12, "annotations", MapStr),
        r(13, "ownerReferences", Msg(&OWNER_REFERENCE)),
        r(14, "finalizers", Str),
        r(17, "managedFields", Msg(&MANAGED_FIELDS_ENTRY)),
    ],
};

static CONDITION: Message = Message {
    name: "Condition",
    fields: &[
        p(1, "type", Str),
        p(2, "status", Str),
        f(3, "observedGeneration", Int64),
        p(4, "lastTransitionTime", Time),
        p(5, "reason", Str),
        p(6, "message", Str),
    ],
};

static NAMESPACE_SPEC: Message = Message {
    name: "NamespaceSpec",
    fields: &[r(1, "finalizers", Str)],
};

static NAMESPACE_CONDITION: Message = Message {
    name: "NamespaceCondition",
    fields: &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(4, "lastTransitionTime", Time),
        f(5, "reason", Str),
        f(6, "message", Str),
    ],
};

static NAMESPACE_STATUS: Message = Message {
    name: "NamespaceStatus",
    fields: &[
        f(1, "phase", Str),
        r(2, "conditions", Msg(&NAMESPACE_CONDITION)),
    ],
};

static NAMESPACE: Message = Message {
    name: "Namespace",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&NAMESPACE_SPEC)),
        f(3, "status", Msg(&NAMESPACE_STATUS)),
    ],
};

static CONFIG_MAP: Message = Message {
    name: "ConfigMap",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "data", MapStr),
        f(3, "binaryData", MapBytes),
        p(4, "immutable", Bool),
    ],
};

static SECRET: Message = Message {
    name: "Secret",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "data", MapBytes),
        f(3, "type", Str),
        f(4, "stringData", MapStr),
        p(5, "immutable", Bool),
    ],
};

static OBJECT_REFERENCE: Message = Message {
    name: "ObjectReference",
    fields: &[
        f(1, "kind", Str),
        f(2, "namespace", Str),
        f(3, "name", Str),
        f(4, "uid", Str),
        f(5, "apiVersion", Str),
        f(6, "resourceVersion", Str),
        f(7, "fieldPath", Str),
    ],
};

static LOCAL_OBJECT_REFERENCE: Message = Message {
    name: "LocalObjectReference",
    fields: &[f(1, "name", Str)],
};

static SERVICE_ACCOUNT: Message = Message {
    name: "ServiceAccount",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        r(2, "secrets", Msg(&OBJECT_REFERENCE)),
        r(3, "imagePullSecrets", Msg(&LOCAL_OBJECT_REFERENCE)),
        p(4, "automountServiceAccountToken", Bool),
    ],
};

static SERVICE_PORT: Message = Message {
    name: "ServicePort",
    fields: &[
        f(1, "name", Str),
        f(2, "protocol", Str),
        p(3, "port", Int32),
        f(4, "targetPort", IntOrString),
        f(5, "nodePort", Int32),
        p(6, "appProtocol", Str),
    ],
};

static CLIENT_IP_CONFIG: Message = Message {
    name: "ClientIPConfig",
    fields: &[p(1, "timeoutSeconds", Int32)],
};

static SESSION_AFFINITY_CONFIG: Message = Message {
    name: "SessionAffinityConfig",
    fields: &[p(1, "clientIP", Msg(&CLIENT_IP_CONFIG))],
};

static SERVICE_SPEC: Message = Message {
    name: "ServiceSpec",
    fields: &[
        r(1, "ports", Msg(&SERVICE_PORT)),
        f(2, "selector", MapStr),
        f(3, "clusterIP", Str),
        f(4, "type", Str),
        r(5, "externalIPs", Str),
        f(7, "sessionAffinity", Str),
        f(8, "loadBalancerIP", Str),
        r(9, "loadBalancerSourceRanges", Str),
        f(10, "externalName", Str),
        f(11, "externalTrafficPolicy", Str),
        f(12, "healthCheckNodePort", Int32),
        f(13, "publishNotReadyAddresses", Bool),
        p(14, "sessionAffinityConfig", Msg(&SESSION_AFFINITY_CONFIG)),
        p(17, "ipFamilyPolicy", Str),
        r(18, "clusterIPs", Str),
        r(19, "ipFamilies", Str),
        p(20, "allocateLoadBalancerNodePorts", Bool),
        p(21, "loadBalancerClass", Str),
        p(22, "internalTrafficPolicy", Str),
        p(23, "trafficDistribution", Str),
    ],
};

static PORT_STATUS: Message = Message {
    name: "PortStatus",
    fields: &[
        p(1, "port", Int32),
        p(2, "protocol", Str),
        p(3, "error", Str),
    ],
};

static LOAD_BALANCER_INGRESS: Message = Message {
    name: "LoadBalancerIngress",
    fields: &[
        f(1, "ip", Str),
        f(2, "hostname", Str),
        p(3, "ipMode", Str),
        r(4, "ports", Msg(&PORT_STATUS)),
    ],
};

static LOAD_BALANCER_STATUS: Message = Message {
    name: "LoadBalancerStatus",
    fields: &[r(1, "ingress", Msg(&LOAD_BALANCER_INGRESS))],
};

static SERVICE_STATUS: Message = Message {
    name: "ServiceStatus",
    fields: &[
        f(1, "loadBalancer", Msg(&LOAD_BALANCER_STATUS)),
        r(2, "conditions", Msg(&CONDITION)),
    ],
};

static SERVICE: Message = Message {
    name: "Service",
    fields: &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&SERVICE_SPEC)),
        f(3, "status", Msg(&SERVICE_STATUS)),
    ],
};

static PRECONDITIONS: Message = Message {
    name: "Preconditions",
    fields: &[p(1, "uid", Str), p(2, "resourceVersion", Str)],
};

static DELETE_OPTIONS: Message = Message {
    name: "DeleteOptions",
    fields: &[
        p(1, "gracePeriodSeconds", Int64),
        p(2, "preconditions", Msg(&PRECONDITIONS)),
        p(3, "orphanDependents", Bool),
        p(4, "propagationPolicy", Str),
        r(5, "dryRun", Str),
        p(6, "ignoreStoreReadErrorWithClusterBreakingPotential", Bool),
    ],
};

/// The schema for an apiVersion and kind. DeleteOptions is registered in every group version.
fn schema(api_version: &str, kind: &str) -> Option<&'static Message> {
    match (api_version, kind) {
        ("v1", "Namespace") => Some(&NAMESPACE),
        ("v1", "ConfigMap") => Some(&CONFIG_MAP),
        ("v1", "Secret") => Some(&SECRET),
        ("v1", "ServiceAccount") => Some(&SERVICE_ACCOUNT),
        ("v1", "Service") => Some(&SERVICE),
        (_, "DeleteOptions") => Some(&DELETE_OPTIONS),
        _ => None,
    }
}

// ---- decoding -----------------------------------------------------------------------------------

/// Decodes a protobuf request body into the JSON object it stands for, with `apiVersion` and
/// `kind` set from the envelope. Empty `expected_*` accept whatever the envelope names; otherwise
/// a different apiVersion or kind is `KindMismatch`.
pub fn decode(
    body: &[u8],
    expected_api_version: &str,
    expected_kind: &str,
) -> Result<Value, ProtobufError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let env = envelope(rest)?;
    let api_version = if env.api_version.is_empty() {
        expected_api_version
    } else {
        &env.api_version
    };
    let kind = if env.kind.is_empty() {
        expected_kind
    } else {
        &env.kind
    };
    let mismatch = (!expected_api_version.is_empty() && api_version != expected_api_version)
        || (!expected_kind.is_empty() && kind != expected_kind);
    if mismatch {
        return Err(ProtobufError::KindMismatch {
            found: format!("{api_version}/{kind}"),
            expected: format!("{expected_api_version}/{expected_kind}"),
        });
    }
    if !env.content_encoding.is_empty() {
        return Err(ProtobufError::ContentEncoding(env.content_encoding));
    }
    let msg = schema(api_version, kind)
        .ok_or_else(|| ProtobufError::UnknownKind(format!("{api_version}/{kind}")))?;
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version.to_string()));
    obj.insert("kind".into(), Value::String(kind.to_string()));
    obj.extend(message(env.raw, msg)?);
    Ok(Value::Object(obj))
}

/// `runtime.Unknown`'s fields.
#[derive(Default)]
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
}

fn envelope(buf: &[u8]) -> Result<Envelope<'_>, ProtobufError> {
    const UNKNOWN: &str = "Unknown";
    let mut env = Envelope::default();
    let mut rd = Reader::new(buf);
    while !rd.done() {
        let (num, wire, payload) = rd.field()?;
        let bytes = match (num, payload) {
            (1..=4, Wire::Bytes(b)) => b,
            (1..=4, _) => {
                return Err(ProtobufError::WrongWireType {
                    message: UNKNOWN,
                    field: num,
                    wire,
                    expected: LEN,
                });
            }
            _ => continue,
        };
        match num {
            1 => {
                let mut tm = Reader::new(bytes);
                while !tm.done() {
                    let (n, w, p) = tm.field()?;
                    let target = match n {
                        1 => &mut env.api_version,
                        2 => &mut env.kind,
                        _ => continue,
                    };
                    let Wire::Bytes(b) = p else {
                        return Err(ProtobufError::WrongWireType {
                            message: "TypeMeta",
                            field: n,
                            wire: w,
                            expected: LEN,
                        });
                    };
                    *target = utf8(b, "TypeMeta", n)?;
                }
            }
            2 => env.raw = bytes,
            3 => env.content_encoding = utf8(bytes, UNKNOWN, num)?,
            _ => {} // contentType: the raw bytes are protobuf whatever it says
        }
    }
    Ok(env)
}

fn utf8(b: &[u8], message: &'static str, field: u32) -> Result<String, ProtobufError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtobufError::Utf8 { message, field })
}

/// Decodes one message into a JSON object; unknown field numbers are skipped.
fn message(buf: &[u8], msg: &'static Message) -> Result<Map<String, Value>, ProtobufError> {
    let mut out = Map::new();
    let mut rd = Reader::new(buf);
    while !rd.done() {
        let (num, wire, payload) = rd.field()?;
        let Some(field) = msg.fields.iter().find(|f| f.num == num) else {
            continue;
        };
        let expected = match field.ty {
            Bool | Int32 | Int64 => VARINT,
            _ => LEN,
        };
        let v = match (field.ty, payload) {
            (Bool, Wire::Varint(v)) => Value::Bool(v != 0),
            // int32 values are sign-extended varints: the low 32 bits are the value.
            (Int32, Wire::Varint(v)) => Value::from(v as u32 as i32),
            (Int64, Wire::Varint(v)) => Value::from(v as i64),
            (Str, Wire::Bytes(b)) => Value::String(utf8(b, msg.name, num)?),
            (Msg(m), Wire::Bytes(b)) => Value::Object(message(b, m)?),
            (MapStr | MapBytes, Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, field.ty, msg.name, num)?;
                let entry = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = entry {
                    m.insert(k, v);
                }
                continue;
            }
            (IntOrString, Wire::Bytes(b)) => int_or_string(b)?,
            (Time, Wire::Bytes(b)) => time(b)?,
            (RawJson, Wire::Bytes(b)) => fields_v1(b)?,
            _ => {
                return Err(ProtobufError::WrongWireType {
                    message: msg.name,
                    field: num,
                    wire,
                    expected,
                });
            }
        };
        if field.repeated {
            let entry = out
                .entry(field.name)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = entry {
                a.push(v);
            }
        } else if field.zero == Zero::Keep || !is_zero(&v) {
            out.insert(field.name.to_string(), v);
        } else {
            // A later zero value still overrides an earlier one (last one wins).
            out.remove(field.name);
        }
    }
    Ok(out)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// One `map<string, string|bytes>` entry (key=1, value=2).
fn map_entry(
    buf: &[u8],
    ty: Ty,
    message: &'static str,
    field: u32,
) -> Result<(String, Value), ProtobufError> {
    let mut key = String::new();
    let mut val: &[u8] = &[];
    let mut rd = Reader::new(buf);
    while !rd.done() {
        let (n, wire, payload) = rd.field()?;
        if !matches!(n, 1 | 2) {
            continue;
        }
        let Wire::Bytes(b) = payload else {
            return Err(ProtobufError::WrongWireType {
                message,
                field,
                wire,
                expected: LEN,
            });
        };
        if n == 1 {
            key = utf8(b, message, field)?;
        } else {
            val = b;
        }
    }
    let v = match ty {
        MapBytes => Value::String(base64::engine::general_purpose::STANDARD.encode(val)),
        _ => Value::String(utf8(val, message, field)?),
    };
    Ok((key, v))
}

/// `intstr.IntOrString` (type=1: 0 int, 1 string; intVal=2; strVal=3) as a JSON number or
/// string; the zero value (int 0) is null, and so omitted.
fn int_or_string(buf: &[u8]) -> Result<Value, ProtobufError> {
    const IOS: &str = "IntOrString";
    let (mut ty, mut int_val, mut str_val) = (0u64, 0i32, String::new());
    let mut rd = Reader::new(buf);
    while !rd.done() {
        let (n, wire, payload) = rd.field()?;
        match (n, payload) {
            (1, Wire::Varint(v)) => ty = v,
            (2, Wire::Varint(v)) => int_val = v as u32 as i32,
            (3, Wire::Bytes(b)) => str_val = utf8(b, IOS, n)?,
            (1 | 2, _) => {
                return Err(ProtobufError::WrongWireType {
                    message: IOS,
                    field: n,
                    wire,
                    expected: VARINT,
                });
            }
            (3, _) => {
                return Err(ProtobufError::WrongWireType {
                    message: IOS,
                    field: n,
                    wire,
                    expected: LEN,
                });
            }
            _ => {}
        }
    }
    Ok(match ty {
        1 => Value::String(str_val),
        _ if int_val == 0 => Value::Null,
        _ => Value::from(int_val),
    })
}

/// `metav1.Time` (seconds=1, nanos=2) as RFC 3339 in UTC with second precision, as
/// Kubernetes' JSON has it; the zero time is null, and so omitted.
fn time(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut seconds = 0i64;
    let mut rd = Reader::new(buf);
    while !rd.done() {
        let (n, wire, payload) = rd.field()?;
        match (n, payload) {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(_)) => {} // nanos: JSON times have second precision
            (1 | 2, _) => {
                return Err(ProtobufError::WrongWireType {
                    message: "Time",
                    field: n,
                    wire,
                    expected: VARINT,
                });
            }
            _ => {}
        }
    }
    if seconds == 0 {
        return Ok(Value::Null);
    }
    let ts = jiff::Timestamp::from_second(seconds).map_err(|_| ProtobufError::Time(seconds))?;
    Ok(Value::String(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

/// `metav1.FieldsV1` (raw=1): JSON bytes, embedded as JSON.
fn fields_v1(buf: &[u8]) -> Result<Value, ProtobufError> {
    let mut raw: &[u8] = &[];
    let mut rd = Reader::new(buf);
    while !rd.done() {
        let (n, wire, payload) = rd.field()?;
        match (n, payload) {
            (1, Wire::Bytes(b)) => raw = b,
            (1, _) => {
                return Err(ProtobufError::WrongWireType {
                    message: FIELDS_V1.name,
                    field: n,
                    wire,
                    expected: LEN,
                });
            }
            _ => {}
        }
    }
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(raw).map_err(|_| ProtobufError::FieldsV1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    /// A tiny protobuf writer for building test bodies.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn varint(mut self, mut v: u64) -> Self {
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    self.0.push(b);
                    return self;
                }
                self.0.push(b | 0x80);
            }
        }
        fn key(self, num: u32, wire: u8) -> Self {
            self.varint(u64::from(num) << 3 | u64::from(wire))
        }
        fn int(self, num: u32, v: u64) -> Self {
            self.key(num, VARINT).varint(v)
        }
        fn bytes(self, num: u32, b: &[u8]) -> Self {
            let mut s = self.key(num, LEN).varint(b.len() as u64);
            s.0.extend_from_slice(b);
            s
        }
        fn str(self, num: u32, s: &str) -> Self {
            self.bytes(num, s.as_bytes())
        }
        fn msg(self, num: u32, m: W) -> Self {
            self.bytes(num, &m.0)
        }
        fn entry(self, num: u32, k: &str, v: &[u8]) -> Self {
            self.msg(num, W::default().str(1, k).bytes(2, v))
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: W) -> Vec<u8> {
        let tm = W::default().str(1, api_version).str(2, kind);
        let env = W::default().msg(1, tm).msg(2, raw).str(3, "").str(4, "");
        [MAGIC, &env.0].concat()
    }

    fn meta(name: &str, ns: &str) -> W {
        W::default()
            .str(1, name)
            .str(2, "")
            .str(3, ns)
            .str(6, "")
            .int(7, 0)
            .msg(8, W::default())
    }

    #[test]
    fn secret_with_meta() {
        let m = meta("s", "demo")
            .entry(11, "app", b"web")
            .entry(12, "note", b"x")
            .msg(
                13,
                W::default()
                    .str(1, "ConfigMap")
                    .str(3, "cm")
                    .str(4, "u1")
                    .str(5, "v1")
                    .int(6, 1),
            )
            .str(14, "example.com/hold")
            .str(99, "unknown field");
        let raw = W::default()
            .msg(1, m)
            .entry(2, "k", b"v\xff")
            .str(3, "Opaque")
            .int(5, 0);
        let v = decode(&envelope("v1", "Secret", raw), "v1", "Secret").unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {
                    "name": "s", "namespace": "demo",
                    "labels": {"app": "web"}, "annotations": {"note": "x"},
                    "ownerReferences": [{"kind": "ConfigMap", "name": "cm", "uid": "u1",
                                         "apiVersion": "v1", "controller": true}],
                    "finalizers": ["example.com/hold"],
                },
                "data": {"k": "dv8="},
                "type": "Opaque",
                "immutable": false,
            })
        );
    }

    #[test]
    fn service_ports_and_target_port() {
        let port = |name: &str, target: W| {
            W::default()
                .str(1, name)
                .str(2, "TCP")
                .int(3, 80)
                .msg(4, target)
                .int(5, 0)
        };
        let spec = W::default()
            .msg(
                1,
                port("80-8080", W::default().int(1, 0).int(2, 8080).str(3, "")),
            )
            .msg(
                1,
                port("named", W::default().int(1, 1).int(2, 0).str(3, "http")),
            )
            .entry(2, "app", b"web")
            .str(3, "")
            .str(4, "ClusterIP")
            .str(7, "None");
        let raw = W::default()
            .msg(1, meta("web", "demo"))
            .msg(2, spec)
            .msg(3, W::default().msg(1, W::default()));
        let v = decode(&envelope("v1", "Service", raw), "", "").unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "demo"},
                "spec": {
                    "ports": [
                        {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
                        {"name": "named", "protocol": "TCP", "port": 80, "targetPort": "http"},
                    ],
                    "selector": {"app": "web"},
                    "type": "ClusterIP",
                    "sessionAffinity": "None",
                },
            })
        );
    }

    #[test]
    fn negative_ints_and_timestamps() {
        let m = W::default()
            .str(1, "n")
            .msg(8, W::default().int(1, 1_700_000_000).int(2, 5))
            .int(10, (-1i64) as u64);
        let raw = W::default().msg(1, m);
        let v = decode(&envelope("v1", "Namespace", raw), "v1", "Namespace").unwrap();
        assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], -1);
    }

    #[test]
    fn delete_options() {
        let raw = W::default()
            .int(1, 0)
            .msg(2, W::default().str(1, "u").str(2, "7"))
            .str(4, "Foreground")
            .str(5, "All");
        let v = decode(&envelope("v1", "DeleteOptions", raw), "", "").unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                   "preconditions": {"uid": "u", "resourceVersion": "7"},
                   "propagationPolicy": "Foreground", "dryRun": ["All"]})
        );
    }

    #[test]
    fn kinds_are_checked() {
        let body = envelope("v1", "Pod", W::default());
        assert_eq!(
            decode(&body, "", ""),
            Err(ProtobufError::UnknownKind("v1/Pod".into()))
        );
        assert_eq!(ApiError::from(decode(&body, "", "").unwrap_err()).code, 415);
        let body = envelope("v1", "ConfigMap", W::default());
        assert!(matches!(
            decode(&body, "v1", "Secret"),
            Err(ProtobufError::KindMismatch { .. })
        ));
        assert!(matches!(
            decode(b"{\"kind\":1}", "", ""),
            Err(ProtobufError::NoMagic)
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        let cm = |raw: Vec<u8>| {
            let tm = W::default().str(1, "v1").str(2, "ConfigMap");
            let env = W::default().msg(1, tm).bytes(2, &raw);
            decode(&[MAGIC, &env.0].concat(), "", "")
        };
        // truncated varint (a key whose continuation bit runs off the end)
        assert_eq!(cm(vec![0x80]), Err(ProtobufError::Truncated));
        assert_eq!(
            cm(W::default().key(4, VARINT).0),
            Err(ProtobufError::Truncated)
        );
        // a varint of 11 continuation bytes
        assert_eq!(cm(vec![0xff; 11]), Err(ProtobufError::VarintTooLong));
        // a huge length
        let huge = W::default().key(1, LEN).varint(u64::MAX).0;
        assert_eq!(cm(huge), Err(ProtobufError::Length(u64::MAX)));
        let past = W::default().key(2, LEN).varint(5).0;
        assert_eq!(
            cm([past, b"ab".to_vec()].concat()),
            Err(ProtobufError::Length(5))
        );
        // wrong wire types: a varint where a message belongs, a string where a bool belongs
        assert!(matches!(
            cm(W::default().int(1, 3).0),
            Err(ProtobufError::WrongWireType { field: 1, .. })
        ));
        assert!(matches!(
            cm(W::default().str(4, "yes").0),
            Err(ProtobufError::WrongWireType { field: 4, .. })
        ));
        // groups and invalid wire types
        assert_eq!(
            cm(W::default().key(9, 3).0),
            Err(ProtobufError::WireType(3))
        );
        assert_eq!(
            cm(W::default().key(9, 7).0),
            Err(ProtobufError::WireType(7))
        );
        // field number 0
        assert_eq!(cm(vec![0x00, 0x00]), Err(ProtobufError::FieldZero));
        // truncated fixed-width fields
        assert_eq!(
            cm(W::default().key(9, FIXED64).0),
            Err(ProtobufError::Length(8))
        );
        assert_eq!(
            cm([W::default().key(9, FIXED32).0, vec![1, 2]].concat()),
            Err(ProtobufError::Length(4))
        );
        // bad UTF-8 in a string, nested inside metadata
        let bad = W::default().msg(1, W::default().bytes(1, b"\xff\xfe")).0;
        assert!(matches!(cm(bad), Err(ProtobufError::Utf8 { .. })));
        // a truncated envelope
        assert_eq!(
            decode(b"k8s\0\x0a\x10", "", ""),
            Err(ProtobufError::Length(16))
        );
        // out-of-range timestamps
        let t = W::default()
            .msg(1, W::default().msg(8, W::default().int(1, u64::MAX >> 1)))
            .0;
        assert!(matches!(cm(t), Err(ProtobufError::Time(_))));
        // unknown fixed-width fields are skipped
        let ok = [
            W::default().key(9, FIXED64).0,
            vec![0; 8],
            W::default().key(10, FIXED32).0,
            vec![0; 4],
        ]
        .concat();
        assert_eq!(
            cm(ok).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap"})
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        // A deterministic xorshift: every prefix of many pseudo-random bodies decodes or fails.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut raw = Vec::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                raw.push(x as u8);
            }
            for n in [0, 1, 7, 31, 64] {
                let tm = W::default().str(1, "v1").str(2, "Service");
                let env = W::default().msg(1, tm).bytes(2, &raw[..n]);
                let _ = decode(&[MAGIC, &env.0].concat(), "", "");
                let _ = decode(&[MAGIC, &raw[..n]].concat(), "", "");
            }
        }
    }
}
