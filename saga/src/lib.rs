//! # eventfold-saga
//!
//! Orchestrated sagas (a definition with steps and compensations, persisted and resumable, with
//! durable timeouts) and choreographed sagas (handlers reacting to other services' events), with
//! correlation carried end to end.
//!
//! This crate is the room for that work; it holds no public items yet. Its guarantee is guarantee
//! 5 of the design brief: every started saga ends Completed, Compensated or Failed.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
