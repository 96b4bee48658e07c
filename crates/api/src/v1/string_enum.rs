//! `string_enum!`: KubeVirt's string-typed enums as Rust enums that keep unknown values.

/// Declares an enum serialised as a plain string. Known values get a variant; anything else
/// parses into `Other(String)` and is written back verbatim. The first variant is `Default`.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $(#[$fmeta:meta])* $first:ident = $fvalue:literal
            $(, $(#[$vmeta:meta])* $variant:ident = $value:literal)* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $(#[$fmeta])*
            #[doc = concat!("`", $fvalue, "`")]
            $first,
            $(
                $(#[$vmeta])*
                #[doc = concat!("`", $value, "`")]
                $variant,
            )*
            /// A value this crate does not know, kept verbatim.
            Other(String),
        }

        impl $name {
            /// Every value this crate knows, in declaration order.
            pub const KNOWN: &'static [&'static str] = &[$fvalue $(, $value)*];

            /// The value as it appears in JSON.
            pub fn as_str(&self) -> &str {
                match self {
                    Self::$first => $fvalue,
                    $(Self::$variant => $value,)*
                    Self::Other(s) => s.as_str(),
                }
            }

            /// False for `Other`.
            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Other(_))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::$first
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $fvalue => Self::$first,
                    $($value => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match Self::from(s.as_str()) {
                    Self::Other(_) => Self::Other(s),
                    known => known,
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self::from(s))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(deserializer)?;
                Ok(Self::from(s))
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": concat!("One of: ", $fvalue $(, ", ", $value)*, "."),
                })
            }
        }
    };
}
