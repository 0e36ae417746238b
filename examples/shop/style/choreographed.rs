//! The choreographed style: the same flow with nobody in charge. The inventory service reserves
//! stock when it sees `order.placed`, the payment service charges when it sees
//! `stock.reserved`, and so on; failures travel back the same way (`payment.declined` makes the
//! inventory release and the order reject).
//!
//! NOT YET: this style is written on eventfold's choreography API
//! (`eventfold::saga::choreography`: `Reaction`, `LocalReactor`, `ReactionHandler`), which is
//! being built. Until it is there, `--style choreographed` is refused with the message below.

use eventfold::BoxError;

/// Why `--style choreographed` does not run yet.
pub fn not_available() -> BoxError {
    "--style choreographed is not available yet: it runs on eventfold's choreography API \
     (eventfold::saga::choreography), which is not in this version; use --style orchestrated \
     (the default)"
        .into()
}
