//! What a card is: card templates (keys, roles, write order), the profiles that decide the bytes
//! a chip and a PSAM expect, the identifiers a card and its holder carry, and the regions of
//! the province.

pub mod identifiers;
pub mod profile;
pub mod region;
pub(crate) mod source;
pub mod template;
