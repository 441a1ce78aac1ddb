//! `kms-ceremony calc`: the results DOMAIN.md publishes, reproduced through the real binary, and
//! the refusals of bad input (one line on stderr, exit code 2, no key on stdout).

use crate::common::{Output, ceremony};

const ROOT_TDES: &str = "11111111111111112222222222222222";
const ROOT_SM4: &str = "0123456789ABCDEFFEDCBA9876543210";
const F1: &str = "3434303030307368";
const F2: &str = "3434303130307378";
const F3: &str = "86843202AD932A48";

fn ok(out: &Output) {
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(out.stderr.is_empty(), "stderr: {}", out.stderr);
}

fn refused(out: &Output, needle: &str) {
    assert_eq!(out.code, 2, "stdout: {} stderr: {}", out.stdout, out.stderr);
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout);
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one line: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(needle),
        "{needle:?} not in {}",
        out.stderr
    );
}

#[test]
fn derive_reproduces_the_tdes_chain_kcvs_and_prints_no_key() {
    let out = ceremony(
        &[
            "calc", "derive", "--alg", "tdes", "--factor", F1, "--factor", F2, "--factor", F3,
        ],
        &format!("{ROOT_TDES}\n"),
    );
    ok(&out);
    assert_eq!(out.last_line(), "32CD7C");
    for kcv in ["D2B91C", "E47B1C", "AEA797"] {
        assert!(out.stdout.contains(kcv), "{kcv} missing: {}", out.stdout);
    }
    for key in [
        ROOT_TDES,
        "A2344D4CF01A61CEBA2D134CDDF48122",
        "F79FAF107F20B30191C357677F76DA47",
        "863CB6B83CB1EFABE9C27E9737E47BD6",
    ] {
        assert!(!out.stdout.contains(key) && !out.stdout.contains(&key[..16]));
    }
}

#[test]
fn derive_reproduces_the_sm4_chain() {
    // The SM4 chain's card key is 86266A1936F6C58BCA347676C6E93436: compare KCVs.
    let card = ceremony(
        &["calc", "kcv", "--alg", "sm4"],
        "86266A1936F6C58BCA347676C6E93436\n",
    );
    ok(&card);
    let derived = ceremony(
        &[
            "calc", "derive", "--alg", "sm4", "--factor", F1, "--factor", F2, "--factor", F3,
        ],
        &format!("{ROOT_SM4}\n"),
    );
    ok(&derived);
    assert_eq!(derived.last_line(), card.last_line());
    assert_eq!(card.last_line().len(), 8, "SM4 KCV defaults to 4 bytes");
    assert!(!derived.stdout.contains("86266A19"));
}

#[test]
fn derive_with_option_a_differs_only_by_parity() {
    let pboc = ceremony(
        &["calc", "derive", "--alg", "tdes", "--factor", F1],
        ROOT_TDES,
    );
    let option_a = ceremony(
        &[
            "calc",
            "derive",
            "--alg",
            "tdes",
            "--method",
            "emv-option-a",
            "--factor",
            F1,
        ],
        ROOT_TDES,
    );
    ok(&pboc);
    ok(&option_a);
    assert_eq!(pboc.last_line(), "E47B1C");
    // A2344C4CF11A61CEBA2C134CDCF48023 is the parity-adjusted province key.
    let adjusted = ceremony(
        &["calc", "kcv", "--alg", "tdes"],
        "A2344C4CF11A61CEBA2C134CDCF48023",
    );
    assert_eq!(option_a.last_line(), adjusted.last_line());
}

#[test]
fn kcv_methods_and_lengths() {
    let out = ceremony(&["calc", "kcv", "--alg", "tdes"], ROOT_TDES);
    ok(&out);
    assert_eq!(out.last_line(), "D2B91C");
    let long = ceremony(&["calc", "kcv", "--alg", "tdes", "--len", "8"], ROOT_TDES);
    assert!(long.last_line().starts_with("D2B91C") && long.last_line().len() == 16);
    // AES defaults to CMAC, 5 bytes; legacy is available on request.
    let aes = ceremony(&["calc", "kcv", "--alg", "aes"], &"00".repeat(16));
    ok(&aes);
    assert!(aes.stdout.contains("cmac") && aes.last_line().len() == 10);
    let legacy = ceremony(
        &[
            "calc", "kcv", "--alg", "aes", "--method", "legacy", "--len", "16",
        ],
        &"00".repeat(16),
    );
    // FIPS 197-consistent: AES-128 of zeros under the zero key.
    assert_eq!(legacy.last_line(), "66E94BD4EF8A2C3B884CFA59CA342B2E");
}

#[test]
fn mac_reproduces_the_real_card_trace() {
    let out = ceremony(
        &[
            "calc",
            "mac",
            "--alg",
            "sm4",
            "--iv",
            "84B7B9199A29A245B2ADE3E80BE4EAF3",
            "--data",
            "845E01001491A41964F0736EB6F6003DD1934FFE11",
        ],
        "4D59306C7397E06DE3CD82A14A926FBA\n",
    );
    ok(&out);
    assert_eq!(out.last_line(), "E48CEFB3");
    let retail = ceremony(
        &[
            "calc",
            "mac",
            "--alg",
            "tdes",
            "--iv",
            "0000000000000000",
            "--data",
            "8424000008FFFF1234567890123456",
        ],
        "0123456789ABCDEFFEDCBA9876543210",
    );
    ok(&retail);
    assert_eq!(retail.last_line(), "E07B8DF1");
}

#[test]
fn factors_from_region_codes_and_atrs() {
    let city = ceremony(&["calc", "factor", "--region", "440100"], "");
    ok(&city);
    assert!(city.stdout.contains(F1));
    assert_eq!(city.last_line(), F2);
    let province = ceremony(&["calc", "factor", "--region", "440000"], "");
    assert_eq!(province.last_line(), F1);
    let atr = ceremony(
        &[
            "calc",
            "atr-factor",
            "3B6D000080318065B08701AD86843202AD932A48",
        ],
        "",
    );
    ok(&atr);
    assert_eq!(atr.last_line(), F3);
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    refused(
        &ceremony(&["calc", "kcv", "--alg", "tdes"], "0123456789ABCDEF0\n"),
        "not valid hex",
    );
    refused(
        &ceremony(&["calc", "kcv", "--alg", "tdes"], "0123456789ABCDEF\n"),
        "must be 16 bytes",
    );
    refused(
        &ceremony(&["calc", "kcv", "--alg", "tdes"], ""),
        "standard input",
    );
    refused(
        &ceremony(&["calc", "kcv", "--alg", "tdes", "--len", "9"], ROOT_TDES),
        "KCV length",
    );
    refused(
        &ceremony(
            &["calc", "derive", "--alg", "tdes", "--factor", "3434"],
            ROOT_TDES,
        ),
        "factor",
    );
    refused(
        &ceremony(
            &[
                "calc",
                "derive",
                "--alg",
                "sm4",
                "--method",
                "pboc-tdes",
                "--factor",
                F1,
            ],
            ROOT_SM4,
        ),
        "not defined for SM4",
    );
    refused(
        &ceremony(&["calc", "atr-factor", "3B6D0000"], ""),
        "ATR has 4 bytes",
    );
    refused(
        &ceremony(&["calc", "factor", "--region", "44010"], ""),
        "region code",
    );
    refused(
        &ceremony(
            &["calc", "mac", "--alg", "sm4", "--iv", "00", "--data", "00"],
            ROOT_SM4,
        ),
        "challenge",
    );
    // Unknown algorithms are refused by the argument parser, also with exit code 2.
    let unknown = ceremony(&["calc", "kcv", "--alg", "rsa"], ROOT_TDES);
    assert_eq!(unknown.code, 2);
    assert!(unknown.stdout.is_empty());
}

#[test]
fn a_refused_key_is_not_echoed() {
    let secret = "0123456789ABCDEFFEDCBA98765432";
    let out = ceremony(&["calc", "kcv", "--alg", "tdes"], secret);
    assert_eq!(out.code, 2);
    assert!(!out.stderr.contains(secret) && !out.stderr.contains(&secret[..8]));
}

/// TR-31:2018 annex A.7.2.2 (hsm-sim/tests/vectors/tr31.json): the KBPK and the block on stdin.
const A722_KBPK: &str = "DD7515F2BFC17F85CE48F3CA25CB21F6";
const A722_BLOCK: &str =
    "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E";

#[test]
fn tr31_unwrap_prints_the_header_and_kcv_never_the_key() {
    let out = ceremony(
        &["calc", "tr31-unwrap"],
        &format!("{A722_KBPK}\n{A722_BLOCK}\n"),
    );
    ok(&out);
    assert_eq!(out.last_line(), "57C409");
    assert!(out.stdout.contains("key usage      P0"));
    assert!(out.stdout.contains("TDES-2key"));
    // The key is 3F419E1CB7079442AA37474C2EFBF8B8.
    assert!(!out.stdout.contains("3F419E1C") && !out.stdout.contains("2EFBF8B8"));
}

/// Issue 15: psec's published version B block with a single-length DES key under `T` unwraps,
/// and the calculator says it read it liberally.
#[test]
fn tr31_unwrap_accepts_single_des_under_t_and_says_so() {
    let out = ceremony(
        &["calc", "tr31-unwrap"],
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB\nB0096M3TC00E0000B6CD513680EF255FC0DC590726FD0129A7CF6602E7F271631AB4EE7350642F11181AF4CC12F12FD9\n",
    );
    ok(&out);
    assert!(
        out.stdout.contains("algorithm      T (DES)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("accepted, written as D"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("key length     8 bytes"),
        "{}",
        out.stdout
    );
    let key =
        hsm_sim::crypto::SecretKey::from_hex(hsm_api::Algorithm::Des, "EEEEEEEEEEEEEEEE").unwrap();
    assert_eq!(
        out.last_line(),
        hsm_sim::crypto::kcv::compute_default(&key)
            .unwrap()
            .to_hex()
    );
    assert!(!out.stdout.contains("EEEEEEEE"));
}

#[test]
fn tr31_unwrap_refuses_a_tampered_or_short_block() {
    let mut tampered = A722_BLOCK.to_owned();
    tampered.replace_range(20..21, if &A722_BLOCK[20..21] == "0" { "1" } else { "0" });
    refused(
        &ceremony(
            &["calc", "tr31-unwrap"],
            &format!("{A722_KBPK}\n{tampered}\n"),
        ),
        "authentication failed",
    );
    refused(
        &ceremony(
            &["calc", "tr31-unwrap"],
            &format!("{A722_KBPK}\n{}\n", &A722_BLOCK[..40]),
        ),
        "key block",
    );
    refused(
        &ceremony(&["calc", "tr31-unwrap"], &format!("{A722_KBPK}\n")),
        "key block",
    );
    // An AES KBPK given for a version B block.
    refused(
        &ceremony(
            &["calc", "tr31-unwrap"],
            &format!("{}\n{A722_BLOCK}\n", "11".repeat(32)),
        ),
        "must be",
    );
}
