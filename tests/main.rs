//! The one integration-test binary of sscard-kms (`cargo test --workspace` runs it).
//!
//! - `backup`: root backup and restore (issue 10) over mTLS and through the real `kms-ceremony`:
//!   a province and a national root backed up 2-of-3 to three custodians, restored by two each
//!   into a fresh service on another LMK (across a restart), a station's card key checking out
//!   against the chain; every refusal and every `mTLS (backup)` reason code.
//! - `ceremonies`: a full key ceremony through the real `kms-ceremony` against a running
//!   service, secrets on stdin, each officer from their own certificate (init with one share
//!   file per custodian, unseal by two, a national root from two custodians' components, a
//!   master-key root under dual control, a station transport key from components, a card key
//!   that checks out), with every refusal of issue 10; and every `mTLS (ceremonies)` reason code
//!   of README provoked over the API.
//! - `transport_keys`: a station's transport key issued by the HSM under dual control through
//!   the real `kms-ceremony` (two components, one per custodian, formed again in a second
//!   simulator standing for the station's HSM; the station's card key checks out), then replaced
//!   as a TR-31 block under the current key; the refusals and every `mTLS (transport keys)`
//!   reason code of README; a PSAM line's key as TDES components, its PSAM key set under it.
//! - `calc`: the officers' calculator, run as the real `kms-ceremony` binary with secrets on stdin.
//! - `binaries`: the real `sscard-kms` and `kms-ceremony` as child processes, stopped by SIGTERM:
//!   `dev` serves demo card 1 (worked `STK_SSSE` KCV), exits 0, leaves an INTACT audit trail and
//!   restarts on its data without re-seeding; `serve` with a local HSM starts sealed, is unsealed
//!   by two custodians' shares from `hsm init` (officer only; bad shares refused) and is sealed
//!   again after a restart; `serve` without a proper client CA and a second or 1-of-n `hsm init`
//!   are refused; `dev` SIGKILLed under concurrent injections: every acknowledged release is on
//!   record, the crashed store verifies INTACT with `kms-ceremony audit verify` (through a
//!   repaired copy) and the next start serves; `dev --hsm softhsm` delivers demo card 1 with the
//!   simulator's keys and KCVs, and restarts on its token and store.
//!
//! The key service over real mutual TLS on 127.0.0.1 (each test on its own copy of a data
//! directory seeded once with the published test keys). `delivery`, `psam` and `refusals` run
//! on every backend (`on_every_backend!`: `name::local` on `LocalHsm`, `name::softhsm` on the
//! PKCS#11 backend in release mode on a throwaway SoftHSM2 token of its own, each backend with
//! its own seeded fixture):
//! - `delivery`: card keys for the demo station — TR-31 blocks unwrapped under the published
//!   station key, and secure-messaging WRITE KEY commands for **every key of every shipped
//!   template under every shipped COS profile** (ssc-2.0 and ssc-3.0 on t514, ssc-2.0-fmcos on
//!   fmcos) rebuilt byte for byte — CLA/INS/P1/P2/Lc and the key header from the template and
//!   profile files as written with DOMAIN.md §10's rules, the field and MAC by hand — both
//!   against the key chain computed independently from the published roots, 3DES and SM4.
//! - `psam`: PSAM key sets for the demo line — each key at its usage byte's level (city,
//!   provincial, national), no issuer-only key, city keys omitted for a provincial PSAM with
//!   the reason; another line's PSAM, unknown and duplicate serials refused.
//! - `refusals`: wrong region, wrong role, foreign CA, no client certificate, registry states
//!   (not accepted, blacklisted, unknown), malformed identifiers, duplicate card number,
//!   another ATR, the HSM sealed — each with its exact code and reason, and audited; the PKCS#11
//!   backend in strict mode refusing TR-31 delivery with `OPERATION_UNSUPPORTED` and the reason.
//! - `lifecycle`: the card life cycle — every transition checked (who, from which status),
//!   releases only in personalisation (a retry counted and audited), a replacement taking its
//!   card out of service, a blacklisted card's chip refused for another card (factor binding).
//! - `blacklist`: the blacklist for terminals — a version per blacklisting, exported in full and as
//!   increments, signed in the HSM (P-256), tampering, another key and disorder refused; the real
//!   `kms-ceremony registry blacklist-export|verify` (exit 0 genuine, 2 tampered).
//! - `reason_codes`: every reason code README marks `mTLS` provoked over the API, each arriving
//!   as a `google.rpc.ErrorInfo` (domain `sscard-kms`) in the status details with its gRPC code.
//! - `health`: gRPC health of "" and the four KMS services NOT_SERVING while the HSM is sealed,
//!   SERVING once `UnsealHsm` reaches the threshold, NOT_SERVING again after a seal — awaited on
//!   `Watch` streams.
//! - `remote_hsm`: the service on `hsm_sim::remote` over its own mTLS: an HSM outage is
//!   UNAVAILABLE, and the same service works again once the HSM is back on the same port.
//! - `rotation`: a new national root (version 2) serves new cards; a card issued under
//!   version 1 keeps getting the same key.
//! - `restart`: stop, drop, reopen the same directory: blacklist, released ATR, keys (same
//!   KCVs) and the audit chain carry over; nothing is seeded again.
//! - `audit_trail`: offline verification with every seal's MAC checked by the HSM; an edited
//!   record, a re-hashed record and a re-hashed tail (seal heads moved) each caught.
//! - `hostile`: key lists capped at the template and without repeats; every list and string
//!   capped before the service (nothing audited); a 4 MiB refusal subject recorded bounded; raw
//!   malformed protobuf as INVALID_ARGUMENT; an unknown card and mismatching data answered
//!   alike (the audit keeps which); silent TLS handshakes closed at the timeout, a connection
//!   over the cap closed at once, an identity over its rate refused with a retry pushback.
//! - `registry`: the province's review of applicant files — every legality rule and every
//!   reason of a row, duplicates inside a batch and against the store, UTF-8 and GBK files,
//!   cross-region and role refusals, unreadable files storing nothing, resubmission, a
//!   provincial reviewer accepting a waivable row by hand; `registry_cli` the same through the
//!   real `kms-ceremony registry` binary.
//! - `failover`: two `dev` instances on one PostgreSQL database (a throwaway cluster), one
//!   SIGKILLed under load: every acknowledged release on record, the other kept serving, one
//!   chain that verifies with every seal's MAC, no half-released card, the killed one restarts.
//! - `personal_data`: no clear SSN, name (UTF-8 or GBK) or card number in the store after
//!   registering and reviewing cards over the API (the card identifiers found, as a control),
//!   nor in the logs; masked forms in responses; a store of the old layout migrated, and a
//!   migration stopped half-way finished by the next start.
//! - `leaks`: no clear key in any response, refusal, audit record, log line or the database.
//!
//! With `SSCARD_TEST_STORE=postgres` (`.ci/run`'s second pass) every service test runs with the
//! store on PostgreSQL: each test's database holds a `store migrate` copy of the seeded fixture;
//! the three tests that edit or copy the redb file itself say they are skipped.
//!
//! Shared helpers are in `common/` (`harness`: the service on 127.0.0.1 over real mutual TLS;
//! `chain`: the expected keys, identifiers and commands from the published test keys).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod audit_trail;
mod backup;
mod binaries;
mod blacklist;
mod calc;
mod ceremonies;
mod city_roots;
mod common;
mod delivery;
mod failover;
mod health;
mod hostile;
mod leaks;
mod lifecycle;
mod lmk_kill;
mod lmk_rotation;
mod personal_data;
mod psam;
mod reason_codes;
mod refusals;
mod registry;
mod registry_cli;
mod remote_hsm;
mod restart;
mod rotation;
mod terminal;
mod transport_keys;
