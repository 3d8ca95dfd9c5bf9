//! Integration tests against the real services of `scripts/services.sh` (PostgreSQL, an
//! s3s-fs S3 server on loopback, OpenBao servers started per test) and the built binaries. One test binary, a module per area:
//!
//! - `store`: the conformance suite every store implementation passes.
//! - `pipeline`: encode/decode and the integrity checks, on damaged and foreign objects.
//! - `object_lock`: Object Lock on moto: locked and default-retention backups are held by
//!   prune until their date, no delete marker; a killed worker's upload is aborted.
//! - `one_pass`: the one-pass PostgreSQL restore: a part damaged early, in the middle, in
//!   its last 64 KiB or cut at a chunk boundary, or replaced, leaves the target as it was.
//! - `pitr`: PostgreSQL point-in-time recovery: the WAL archiver on a fresh server, base
//!   backups, restores to a time, to the latest commit (with `--start`) and along a second
//!   timeline; a killed archiver, a deleted and a damaged segment, unsigned WAL, metrics.
//! - `pg_upgrade`: a PostgreSQL 15 database dumped with the 18 client, restored into 18.
//! - `postgres`: end-to-end backup → list → verify → restore through the binaries.
//! - `bad_input`: every failure the issue names gets a clear message and loses nothing.
//! - `command`: the command engine on real processes (round trip, failures, argv, sha256).
//! - `copy`: `worker copy` into a directory and another S3 account: verify and restore from
//!   the copy, reruns, damaged and stranger-signed backups refused, a killed copy.
//! - `compat`: backups written before the engine abstraction still list, verify and restore.
//! - `faulty_s3`: backups, verify and restore through a front that answers 503 SlowDown,
//!   resets connections, loses answers of requests that happened, and cuts bodies: every
//!   backup's exit code tells the truth, downloads resume.
//! - `first_hour`: what a new user trips over: `status` without a cluster, a backup
//!   without a signing key, a mistyped store prefix.
//! - `help`: every command's `-h` fits a screen and no help line is wider than 100.
//! - `hardening`: ordering of same-second backups, hostile plan and state files, stalled
//!   sources and SIGTERM, metrics labels, the drill's encoded scratch names.
//! - `durability`: full disk, damaged/junk/future manifests, hostile part names and objects,
//!   bounded memory, silent servers and typos; no command panics on malformed stores.
//! - `prune`: retention on a real store: per target, crash repair, running backups, bad flags.
//! - `clickhouse`: backup → verify → restore under another name with views and Distributed
//!   tables, subsets, damaged parts, wrong keys, a real mid-result exception.
//! - `clickhouse_chain`: incremental backups: a full one and three nights of change, each
//!   restored equal; references on the store, prune keeping bases, a damaged base.
//! - `install`: scripts/install.sh and the krew archive and manifest of scripts/release.sh.
//! - `kubernetes`: the Kubernetes engine against a scripted API server (discovery, lists,
//!   stripping, counts, apply order, a forbidden kind).
//! - `manifests`: our rules (non-root, read-only root, Forbid, no identity…) on every rendered
//!   kustomize overlay.
//! - `monitoring`: alert rules under promtool, dashboard queries and `KubeDrBackupFailed` on
//!   a real Prometheus, metrics on a real Pushgateway, the dead man's switch.
//! - `rebuild`: `restore --all` onto fresh servers (order, summary, RTO, a damaged part,
//!   `--resume`) and `worker drill` into `__drill` scratch databases (metrics, refusals).
//! - `redis`: Redis round trip of every type through a replica-style backup and a
//!   primary-style restore, on real redis-servers; refusals and damaged input.
//! - `rekey`: re-encryption to new recipients: old key refused, new one restores equal
//!   contents; killed mid-way every backup stays restorable; the signature swap's fallback.
//! - `signing`: a backup forged with the public key and bucket write access (unsigned,
//!   signed by a stranger, or with a copied signature) is refused; `minisign -V` by hand.
//! - `vault`: OpenBao backup → verify → restore (fresh cluster with --force, same cluster,
//!   by hand), and sealed / bad token / missing capability / damaged part / wrong key.

mod bad_input;
#[macro_use]
mod clickhouse;
mod clickhouse_chain;
mod clouds;
mod command;
mod compat;
mod copy;
mod durability;
mod faulty_s3;
mod first_hour;
mod hardening;
mod help;
mod image;
mod install;
mod kubernetes;
mod manifests;
mod monitoring;
mod object_lock;
mod one_pass;
mod pg_upgrade;
mod pipeline;
mod pitr;
mod postgres;
mod prune;
mod rebuild;
mod redis;
mod rekey;
mod signing;
mod sqlite;
mod store;
mod vault;
