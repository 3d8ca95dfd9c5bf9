//! The engine and part-format names a manifest records, as enums. A name this build does
//! not know (written by a newer worker) is kept as read in an `Unknown` variant, so an old
//! `kubectl-dr` still lists and verifies a new engine's backups and only refuses to restore
//! them, with a message that says to upgrade. On the wire both are plain strings, as in
//! every manifest written before they were enums (docs/FORMAT.md).

use std::fmt;

/// Declares a string-named enum with an `Unknown(String)` variant, its name table, and
/// string serde.
macro_rules! named {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A name this build does not know, kept as read.
            Unknown(String),
        }

        impl $name {
            /// Every value this build knows, in declaration order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),*];

            /// The name as written in manifests and store keys.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Unknown(other) => other,
                }
            }

            /// Whether this build knows the name.
            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Unknown(_))
            }

            /// The known names, comma-separated (for messages).
            pub fn known_names() -> String {
                [$($text),*].join(", ")
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => $name::$variant,)*
                    other => $name::Unknown(other.to_string()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        // Ordered by name, as listings sort them, not by declaration.
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_str().cmp(other.as_str())
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok($name::from(text.as_ref()))
            }
        }
    };
}

named! {
    /// What a backup is of: the first segment of its store path and the manifest's `engine`.
    /// Declared in the order a full restore takes them (secrets first, then the databases
    /// that need them).
    Engine {
        /// Vault or OpenBao raft snapshots.
        Vault = "vault",
        /// The cluster's own objects (YAML per kind).
        Kubernetes = "kubernetes",
        /// PostgreSQL databases (pg_dump) and roles.
        Postgres = "postgres",
        /// ClickHouse databases over HTTP.
        Clickhouse = "clickhouse",
        /// Redis and Valkey RDB snapshots.
        Redis = "redis",
        /// SQLite database files.
        Sqlite = "sqlite",
        /// Whatever a command prints on stdout.
        Command = "command",
    }
}

impl Engine {
    /// The name people know it by, as help texts and the krew description write it.
    pub fn display_name(&self) -> &str {
        match self {
            Engine::Vault => "Vault/OpenBao",
            Engine::Postgres => "PostgreSQL",
            Engine::Clickhouse => "ClickHouse",
            Engine::Command => "command output",
            Engine::Redis => "Redis/Valkey",
            Engine::Kubernetes => "Kubernetes objects",
            Engine::Sqlite => "SQLite",
            Engine::Unknown(name) => name,
        }
    }
}

named! {
    /// What a part's plaintext is (the manifest's `format`).
    PartFormat {
        /// `pg_dump --format=custom` of one database.
        PgDumpCustom = "pg_dump-custom",
        /// A PostgreSQL data directory as one tar (`pg_basebackup -Ft -X none`), the base of
        /// a point-in-time recovery.
        PgBaseTar = "pg_basebackup-tar",
        /// Plain SQL (PostgreSQL roles and tablespaces from `pg_dumpall --globals-only`).
        Sql = "sql",
        /// A Vault/OpenBao raft snapshot (gzip'd tar).
        VaultSnapshot = "vault-raft-snapshot",
        /// The ClickHouse schema part: every database's and table's DDL, as JSON.
        ClickhouseSchema = "clickhouse-schema-json",
        /// One ClickHouse table's rows in the Native format.
        ClickhouseNative = "clickhouse-native",
        /// One ClickHouse table's rows as TabSeparated.
        ClickhouseTsv = "clickhouse-tsv",
        /// A command's standard output, as it printed it.
        CommandStdout = "command-stdout",
        /// A Redis/Valkey RDB snapshot, as a primary sends it to a replica.
        RedisRdb = "redis-rdb",
        /// Kubernetes objects of one kind, a YAML stream.
        KubernetesYaml = "kubernetes-yaml",
        /// A SQLite database file, as the online backup API copied it.
        SqliteDb = "sqlite-db",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_round_trip_and_unknown_ones_are_kept() {
        for engine in Engine::KNOWN {
            let json = serde_json::to_string(engine).unwrap();
            assert_eq!(&serde_json::from_str::<Engine>(&json).unwrap(), engine);
            assert!(engine.is_known());
        }
        for format in PartFormat::KNOWN {
            assert_eq!(&PartFormat::from(format.as_str()), format);
        }
        let future: Engine = serde_json::from_str("\"etcd\"").unwrap();
        assert_eq!(future, Engine::Unknown("etcd".into()));
        assert!(!future.is_known());
        assert_eq!(serde_json::to_string(&future).unwrap(), "\"etcd\"");
        assert_eq!(future.to_string(), "etcd");
    }

    #[test]
    fn sorted_by_name() {
        let mut engines = Engine::KNOWN.to_vec();
        engines.push(Engine::Unknown("aaa".into()));
        engines.sort();
        let names: Vec<&str> = engines.iter().map(Engine::as_str).collect();
        assert_eq!(
            names,
            [
                "aaa",
                "clickhouse",
                "command",
                "kubernetes",
                "postgres",
                "redis",
                "sqlite",
                "vault"
            ]
        );
    }
}
