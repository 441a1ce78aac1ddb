use super::*;

const ALL: [CardStatus; 11] = [
    CardStatus::Registered,
    CardStatus::Accepted,
    CardStatus::Rejected,
    CardStatus::Initialised,
    CardStatus::Personalised,
    CardStatus::Active,
    CardStatus::Suspended,
    CardStatus::Lost,
    CardStatus::Cancelled,
    CardStatus::Replaced,
    CardStatus::Blacklisted,
];

fn card(status: CardStatus) -> Card {
    Card {
        card_identifier: "440100D1560000050050640776EF3192".into(),
        personal: crate::state::records::Personal {
            ssn_index: "5510".into(),
            card_number_index: "4A10".into(),
            ssn_masked: "440103********1236".into(),
            card_number_masked: "G*****012".into(),
            sealed_ssn: String::new(),
            sealed_card_number: String::new(),
            sealed_name: None,
        },
        region: "440100".into(),
        template_id: "ssc-2.0".into(),
        status,
        blacklist_reason: None,
        atr: None,
        issued_root_versions: Default::default(),
        created_ms: 0,
        releases: 0,
        replaces: None,
    }
}

fn reason(e: Error) -> Refusal {
    match e {
        Error::FailedPrecondition { reason } => reason,
        other => panic!("not a failed precondition: {other:?}"),
    }
}

#[test]
fn every_transition_from_every_status_follows_the_table() {
    use CardStatus as S;
    // (transition, the statuses it is allowed from), written out independently of the code.
    let table: [(Transition, &[CardStatus]); 9] = [
        (Transition::Accept, &[S::Registered, S::Accepted]),
        (Transition::Reject, &[S::Registered]),
        (Transition::Activate, &[S::Personalised]),
        (Transition::Suspend, &[S::Active]),
        (Transition::Resume, &[S::Suspended]),
        (Transition::ReportLost, &[S::Active, S::Suspended]),
        (
            Transition::Cancel,
            &[
                S::Registered,
                S::Accepted,
                S::Initialised,
                S::Personalised,
                S::Active,
                S::Suspended,
                S::Lost,
            ],
        ),
        (
            Transition::Replace,
            &[S::Personalised, S::Active, S::Suspended, S::Lost],
        ),
        (Transition::Blacklist, &ALL),
    ];
    for (transition, allowed) in table {
        for from in ALL {
            let mut c = card(from);
            let result = apply(&mut c, transition);
            if allowed.contains(&from) {
                assert!(result.is_ok(), "{} from {}", transition.name(), from.name());
                assert_eq!(c.status, transition.target());
            } else {
                let expected = if from == S::Blacklisted {
                    Refusal::CardBlacklisted
                } else {
                    Refusal::CardTransitionNotAllowed
                };
                assert_eq!(
                    reason(result.unwrap_err()),
                    expected,
                    "{} from {}",
                    transition.name(),
                    from.name()
                );
                assert_eq!(c.status, from, "a refused transition changes nothing");
            }
        }
    }
}

#[test]
fn keys_are_released_only_in_personalisation() {
    use CardStatus as S;
    for from in ALL {
        for release in [Release::Initialise, Release::Personalise] {
            let expected = match from {
                S::Accepted | S::Initialised | S::Personalised => None,
                S::Registered => Some(Refusal::CardNotAccepted),
                S::Rejected => Some(Refusal::CardRejected),
                S::Blacklisted => Some(Refusal::CardBlacklisted),
                S::Active | S::Suspended | S::Lost | S::Cancelled | S::Replaced => {
                    Some(Refusal::CardNotInPersonalisation)
                }
            };
            let got = check_release(&card(from), release).err().map(reason);
            assert_eq!(got, expected, "{release:?} of a {} card", from.name());
        }
    }
}

#[test]
fn live_cards_count_for_uniqueness() {
    use CardStatus as S;
    for status in ALL {
        let dead = matches!(
            status,
            S::Rejected | S::Cancelled | S::Replaced | S::Blacklisted
        );
        assert_eq!(live(&card(status)), !dead, "{}", status.name());
    }
}

#[test]
fn a_factor_bound_to_another_card_is_refused() {
    let id = "440100D1560000050050640776EF3192";
    assert!(check_factor(None, id).is_ok());
    assert!(check_factor(Some(id), id).is_ok());
    assert_eq!(
        reason(check_factor(Some("440300D1560000050050640776EF3192"), id).unwrap_err()),
        Refusal::CardFactorBoundElsewhere
    );
}
