//! Property tests of the profile parsers (issue 12): a damaged shipped profile is either still a
//! profile or refused with a line inside the file, never a panic or another error.

use proptest::prelude::*;

use crate::card::profile::{BUILTIN_COS, BUILTIN_PSAM, CosProfile, DataFile, PsamProfile};
use crate::error::Error;

/// `src` with one of its lines deleted, replaced by `text`, or cut at a character.
fn damage(src: &str, op: u8, at: prop::sample::Index, text: &str) -> String {
    let lines: Vec<&str> = src.lines().collect();
    let i = at.index(lines.len());
    match op {
        0 => lines
            .iter()
            .enumerate()
            .filter(|(n, _)| *n != i)
            .map(|(_, l)| format!("{l}\n"))
            .collect(),
        1 => lines
            .iter()
            .enumerate()
            .map(|(n, l)| format!("{}\n", if n == i { text } else { l }))
            .collect(),
        _ => src
            .chars()
            .take(at.index(src.chars().count() + 1))
            .collect(),
    }
}

/// The refusal of a damaged `file`, if it is one, names a line of it.
fn check_refusal<T>(
    file: DataFile,
    damaged: &str,
    parsed: Result<T, Error>,
) -> Result<(), TestCaseError> {
    match parsed {
        Ok(_) => Ok(()),
        Err(Error::Profile { file: f, line, .. }) => {
            prop_assert_eq!(f, file);
            prop_assert!(
                (1..=damaged.lines().count() + 1).contains(&line),
                "line {} of {}",
                line,
                damaged.lines().count()
            );
            Ok(())
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "not a profile refusal: {other:?}"
        ))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_damaged_cos_profile_is_refused_at_a_line_never_with_a_panic(
        which in 0usize..BUILTIN_COS.len(),
        op in 0u8..3,
        at in any::<prop::sample::Index>(),
        text in ".{0,48}",
    ) {
        let damaged = damage(BUILTIN_COS[which].1, op, at, &text);
        check_refusal(DataFile::CosProfile, &damaged, CosProfile::parse(&damaged))?;
    }

    #[test]
    fn a_damaged_psam_profile_is_refused_at_a_line_never_with_a_panic(
        which in 0usize..BUILTIN_PSAM.len(),
        op in 0u8..3,
        at in any::<prop::sample::Index>(),
        text in ".{0,48}",
    ) {
        let damaged = damage(BUILTIN_PSAM[which].1, op, at, &text);
        check_refusal(DataFile::PsamProfile, &damaged, PsamProfile::parse(&damaged))?;
    }

    #[test]
    fn arbitrary_text_is_never_a_panic_as_a_profile(text in "\\PC{0,400}") {
        check_refusal(DataFile::CosProfile, &text, CosProfile::parse(&text))?;
        check_refusal(DataFile::PsamProfile, &text, PsamProfile::parse(&text))?;
    }
}
