//! The reserved command groups (`sagas`, `trace`): accepted by the parser, then refused with
//! [`CliError::NotAvailable`] until they exist.

use super::CliError;

/// Arguments of a reserved command (accepted, then refused).
#[derive(Debug, Clone, clap::Args)]
pub struct ReservedArgs {
    #[allow(missing_docs)]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

/// Refuses a reserved command.
pub(super) fn refuse(command: &'static str) -> Result<(), CliError> {
    Err(CliError::NotAvailable { command })
}
