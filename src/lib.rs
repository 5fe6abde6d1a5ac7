//! bodflow keeps customers and contact persons in sync across business applications by
//! processing OAGIS / Infor ION Business Object Documents (BODs).
//!
//! # Layout
//!
//! A BOD goes through the modules in this order (DESIGN.md §3):
//!
//! - [`bod`]: the document model. [`bod::dom`] reads bytes into an element tree under size,
//!   depth and DOCTYPE rules; [`bod::read`] turns it into a typed [`bod::Bod`];
//!   [`bod::write`] writes ConfirmBOD, Acknowledge and Sync documents.
//! - [`pipeline`]: the stages. [`pipeline::validate`], [`pipeline::country`] and
//!   [`pipeline::owner`] are pure functions over typed values; [`pipeline::upsert`] applies a
//!   document in one store transaction and [`pipeline::emit`] writes the outbox rows in it.
//!   The master-data rules around it: [`pipeline::release`] (parked documents a change makes
//!   placeable), [`pipeline::link`] (operator link / unlink, audited) and
//!   [`pipeline::promote`] (promotion to the system of record, Acknowledge correlation).
//! - [`store`]: the sled hub store, the only module that knows sled; [`store::track`] keeps
//!   each message's timeline (`bodflow track`, `GET /messages/{id}`), written by the commit
//!   ([`pipeline::track`]) and completed with publish confirms by the outbox publisher.
//! - [`amqp`]: the broker edge, the only module that knows lapin: topology, the consumer
//!   (ordered parallel lanes, group commit, ack discipline), the outbox publisher (confirms) and `bodflow publish`'s
//!   sender; [`amqp::run`] is the service.
//! - [`config`]: the TOML configuration tree; [`reload`]: the running configuration, swapped
//!   between commit groups on SIGHUP.
//! - [`generate`]: deterministic synthetic BODs for benchmarks and load tests.
//! - [`telemetry`]: metrics through named events, readiness, and the HTTP endpoint
//!   (`/metrics`, `/healthz`, `/readyz`, `/messages/{id}`) of `bodflow run`.
//! - [`admin`]: operator actions inside the service (`POST /resync`, scheduled resyncs).
//! - [`cli`]: the `bodflow` commands; `main.rs` only calls [`cli::main`].
//!
//! `replay` (offline) and the broker service ([`amqp::run`]) call the same [`pipeline::Pipeline`], so an
//! offline replay proves what production does.

pub mod admin;
pub mod amqp;
pub mod bod;
pub mod cli;
pub mod config;
pub mod generate;
pub mod pipeline;
pub mod reload;
pub mod store;
pub mod telemetry;

/// The message of a caught panic (`panic!` with a literal or a formatted message).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}
