//! Root backups: split, restored under another LMK, every refusal at its own share.

use hsm_api::{HierarchyLevel, IssuedShare};

use super::*;
use crate::crypto::random::generate_key;

fn province_root(lmk: &Lmk) -> (KeyToken, SecretKey) {
    let key = generate_key(Algorithm::Tdes2).unwrap();
    let token = lmk
        .wrap(
            &key,
            KeyUsage::CardDerivation(HierarchyLevel::Province),
            Exportability::NonExportable,
        )
        .unwrap();
    (token, key)
}

fn share(text: &str) -> LmkShare {
    LmkShare::new(Zeroizing::new(text.to_owned()))
}

fn copy(issued: &IssuedShare) -> LmkShare {
    share(issued.share.secret_text())
}

fn begin(split: &Split) -> Restoration {
    Restoration::Begin {
        spec: split.spec,
        kcv: split.kcv.clone(),
        backup: split.backup.clone(),
    }
}

fn partial(step: Restored) -> PartialRestore {
    match step {
        Restored::Partial(p) => p,
        Restored::Formed(_) => panic!("formed too early"),
    }
}

fn formed(step: Restored) -> WrappedKey {
    match step {
        Restored::Formed(k) => k,
        Restored::Partial(p) => panic!("still partial: {p:?}"),
    }
}

#[test]
fn any_threshold_of_the_shares_restore_the_root_under_another_lmk() {
    let (old, new) = (Lmk::generate().unwrap(), Lmk::generate().unwrap());
    let (token, key) = province_root(&old);
    let split = split(&old, &token, 2, 3).unwrap();
    assert_eq!(split.shares.len(), 3);
    assert_eq!(split.kcv, kcv::compute_default(&key).unwrap());
    for (i, issued) in split.shares.iter().enumerate() {
        let text = issued.share.secret_text();
        let head = format!(
            "RB1-{}-E6D2N-TDES-{}-2-{:02}-",
            split.backup,
            split.kcv.to_hex(),
            i + 1
        );
        assert!(text.starts_with(&head), "{text}");
        assert!(
            text.ends_with(&format!("-{}", issued.check_value)),
            "{text}"
        );
        assert_eq!(text.len(), head.len() + 32 + 1 + 8);
    }
    for pick in [[0, 1], [2, 0], [1, 2]] {
        let first = partial(restore(&new, begin(&split), &copy(&split.shares[pick[0]])).unwrap());
        assert_eq!((first.received, first.threshold), (1, 2));
        // The partial restore is no token and no partial key.
        assert!(new.unwrap(&first.token).is_err());
        assert!(
            old.unwrap_data(first.token.as_str()).is_err(),
            "bound to its LMK"
        );
        // Typed in lower case with spaces: the same share.
        let typed = share(
            &split.shares[pick[1]]
                .share
                .secret_text()
                .to_lowercase()
                .replace('-', " - "),
        );
        let restored = formed(restore(&new, Restoration::Continue(first.token), &typed).unwrap());
        assert_eq!(restored.kcv, split.kcv);
        let back = new.unwrap(&restored.token).unwrap();
        assert!(back.key == key);
        assert_eq!(
            back.usage,
            KeyUsage::CardDerivation(HierarchyLevel::Province)
        );
        assert_eq!(back.exportability, Exportability::NonExportable);
    }
}

#[test]
fn only_roots_are_backed_up() {
    let lmk = Lmk::generate().unwrap();
    let key = generate_key(Algorithm::Tdes2).unwrap();
    for usage in KeyUsage::ALL {
        let exportability = Exportability::NonExportable;
        let algorithm = match usage {
            KeyUsage::AuditMac
            | KeyUsage::ListSigning(_)
            | KeyUsage::RegistryIndex
            | KeyUsage::RegistryData => Algorithm::Aes256,
            _ => Algorithm::Tdes2,
        };
        let key = if algorithm == Algorithm::Tdes2 {
            SecretKey::new(algorithm, key.secret_bytes()).unwrap()
        } else {
            generate_key(algorithm).unwrap()
        };
        let token = lmk.wrap(&key, usage, exportability).unwrap();
        let result = split(&lmk, &token, 2, 2);
        if policy::may_be_backed_up(usage) {
            assert!(result.is_ok(), "{usage:?}");
        } else {
            assert!(matches!(result, Err(Error::WrongUsage { .. })), "{usage:?}");
        }
    }
    let (token, _) = province_root(&lmk);
    for (m, n) in [(1, 2), (3, 2), (2, 17)] {
        assert!(
            matches!(split(&lmk, &token, m, n), Err(Error::Count { .. })),
            "{m} {n}"
        );
    }
}

#[test]
fn a_wrong_foreign_or_repeated_share_is_refused_and_leaves_the_partial_as_it_was() {
    let (old, new) = (Lmk::generate().unwrap(), Lmk::generate().unwrap());
    let (token, _) = province_root(&old);
    let ours = split(&old, &token, 3, 4).unwrap();
    // Another backup of the same key, and a backup of another key.
    let again = split(&old, &token, 3, 4).unwrap();
    let (other_token, _) = province_root(&old);
    let other = split(&old, &other_token, 3, 4).unwrap();

    let first = partial(restore(&new, begin(&ours), &copy(&ours.shares[0])).unwrap());
    let text = ours.shares[1].share.secret_text();
    // One character of the value changed: its check value no longer matches.
    let mut mistyped = text.to_owned();
    let at = text.len() - 12;
    let c = if &text[at..=at] == "0" { "1" } else { "0" };
    mistyped.replace_range(at..=at, c);
    let refused = [
        share(&mistyped),
        share("garbage"),
        share(""),
        copy(&ours.shares[0]),
        copy(&again.shares[1]),
        copy(&other.shares[1]),
    ];
    for bad in &refused {
        let step = restore(&new, Restoration::Continue(first.token.clone()), bad);
        assert!(matches!(step, Err(Error::Share(_))), "{step:?}");
    }
    // The partial restore still takes the next good share, then the last.
    let second = partial(
        restore(
            &new,
            Restoration::Continue(first.token),
            &copy(&ours.shares[1]),
        )
        .unwrap(),
    );
    assert_eq!(second.received, 2);
    let done = formed(
        restore(
            &new,
            Restoration::Continue(second.token),
            &copy(&ours.shares[3]),
        )
        .unwrap(),
    );
    assert_eq!(done.kcv, ours.kcv);

    // Begun for another key (its KCV), another backup, or another spec: the first share is refused.
    let wrong_kcv = Restoration::Begin {
        spec: ours.spec,
        kcv: other.kcv.clone(),
        backup: ours.backup.clone(),
    };
    let wrong_backup = Restoration::Begin {
        spec: ours.spec,
        kcv: ours.kcv.clone(),
        backup: again.backup.clone(),
    };
    let wrong_spec = Restoration::Begin {
        spec: KeySpec {
            usage: KeyUsage::CardDerivation(HierarchyLevel::National),
            ..ours.spec
        },
        kcv: ours.kcv.clone(),
        backup: ours.backup.clone(),
    };
    for begun in [wrong_kcv, wrong_backup, wrong_spec] {
        assert!(matches!(
            restore(&new, begun, &copy(&ours.shares[0])),
            Err(Error::Share(_))
        ));
    }
}

#[test]
fn a_forged_share_with_a_fresh_check_value_fails_the_kcv_and_nothing_else_is_read() {
    let (old, new) = (Lmk::generate().unwrap(), Lmk::generate().unwrap());
    let (token, _) = province_root(&old);
    let ours = split(&old, &token, 2, 2).unwrap();
    // Someone rewrites a share's value and computes its check value again: its form is right,
    // so only the rebuilt key's KCV can tell (Shamir shares carry no proof of themselves).
    let text = ours.shares[1].share.secret_text();
    let (body, _) = text.rsplit_once('-').unwrap();
    let (head, value) = body.rsplit_once('-').unwrap();
    let forged_value: String = value.chars().rev().collect();
    let forged_body = format!("{head}-{forged_value}");
    let forged = share(&format!("{forged_body}-{}", check_value(&forged_body)));
    let first = partial(restore(&new, begin(&ours), &copy(&ours.shares[0])).unwrap());
    assert_eq!(
        restore(&new, Restoration::Continue(first.token), &forged).unwrap_err(),
        Error::Verification
    );
    // A partial key, a token, or an altered partial restore is refused.
    let first = partial(restore(&new, begin(&ours), &copy(&ours.shares[0])).unwrap());
    let mut altered = first.token.as_str().to_owned();
    let last = if altered.ends_with('0') { "1" } else { "0" };
    altered.replace_range(altered.len() - 1.., last);
    let (root, _) = province_root(&new);
    for bad in [KeyToken::from_stored(altered), root] {
        assert!(restore(&new, Restoration::Continue(bad), &copy(&ours.shares[1])).is_err());
    }
}

#[test]
fn debug_shows_no_share() {
    let lmk = Lmk::generate().unwrap();
    let (token, _) = province_root(&lmk);
    let split = split(&lmk, &token, 2, 2).unwrap();
    let shown = format!("{split:?} {:?}", split.shares);
    for issued in &split.shares {
        let text = issued.share.secret_text();
        let (body, _) = text.rsplit_once('-').unwrap();
        let (_, value) = body.rsplit_once('-').unwrap();
        assert!(!shown.contains(value), "{shown}");
    }
}
