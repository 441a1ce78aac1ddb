//! What a card is: card templates (keys, write order, PSAM usage), the identifiers a card and
//! its holder carry, and the regions of the province.

pub mod identifiers;
pub mod region;
pub mod template;
