//! The hand-out of secret parts: once each, then gone.

use hsm_api::LmkShare;
use zeroize::Zeroizing;

use super::*;

fn part(text: &str) -> IssuedShare {
    IssuedShare {
        share: LmkShare::new(Zeroizing::new(text.to_owned())),
        check_value: format!("cv-{text}"),
    }
}

#[test]
fn each_part_is_handed_out_once() {
    let mut handout = Handout::default();
    let parts = handout
        .deposit(2, vec![part("a"), part("b"), part("c")])
        .unwrap();
    assert_eq!((parts.count, parts.threshold), (3, 2));
    assert_eq!(
        handout.take(&parts.set, 0).unwrap_err(),
        Error::PartNotAvailable
    );
    assert_eq!(
        handout.take(&parts.set, 4).unwrap_err(),
        Error::PartNotAvailable
    );
    assert_eq!(
        handout.take(&parts.set, 2).unwrap().share.secret_text(),
        "b"
    );
    assert_eq!(
        handout.take(&parts.set, 2).unwrap_err(),
        Error::PartNotAvailable
    );
    assert_eq!(
        handout.take("other", 1).unwrap_err(),
        Error::PartNotAvailable
    );
    assert!(handout.holds(&parts.set));
    assert_eq!(handout.take(&parts.set, 1).unwrap().check_value, "cv-a");
    assert_eq!(
        handout.take(&parts.set, 3).unwrap().share.secret_text(),
        "c"
    );
    // The last part taken, the set is gone.
    assert!(!handout.holds(&parts.set));
    let again = handout.deposit(2, vec![part("d"), part("e")]).unwrap();
    assert_ne!(again.set, parts.set);
    handout.clear();
    assert_eq!(
        handout.take(&again.set, 1).unwrap_err(),
        Error::PartNotAvailable
    );
}
