//! # eventfold-projections
//!
//! CQRS read projections: an apply function per event, a checkpoint written in the read model's
//! own transaction, a runner that catches up and then follows live appends, and rebuilds (in place
//! or blue/green).
//!
//! This crate is the room for that work; it holds no public items yet. Its guarantee is guarantee
//! 4 of the design brief: a projection sees every committed event once, never skipping.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
