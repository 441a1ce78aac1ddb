//! The order in which [`HsmTurns`] serves waiting batches, by events (which ticket holds the turn
//! after each release), never by time.

use std::net::SocketAddr;

use super::{Caller, HsmTurns, Ticket, Turn};

fn conn(port: u16) -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// With one turn, held by `holder`: releases it, then each turn in the order it is granted,
/// and returns the labels of the tickets in that order. Exactly one ticket holds the turn
/// after each release.
fn order_of_service(holder: Turn, mut tickets: Vec<(&'static str, Ticket)>) -> Vec<&'static str> {
    let mut served = Vec::new();
    drop(holder);
    while !tickets.is_empty() {
        let mut ready: Vec<(usize, Turn)> = tickets
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (_, t))| t.try_take().map(|turn| (i, turn)))
            .collect();
        assert_eq!(ready.len(), 1, "one turn, one batch served at a time");
        let (i, turn) = ready.remove(0);
        served.push(tickets.remove(i).0);
        drop(turn);
    }
    served
}

fn first_turn(turns: &HsmTurns) -> Turn {
    match turns.ticket(Caller::on("holder", None)) {
        Ticket::Now(turn) => turn,
        Ticket::Waiting(_) => panic!("a free turn is given at once"),
    }
}

#[test]
fn identities_take_turns_whatever_their_number_of_batches() {
    let turns = HsmTurns::new(1);
    let holder = first_turn(&turns);
    let bulk = Caller::on("spiffe://bulk", conn(1));
    let station = Caller::on("spiffe://station", conn(2));
    let tickets = vec![
        ("bulk1", turns.ticket(bulk.clone())),
        ("bulk2", turns.ticket(bulk.clone())),
        ("bulk3", turns.ticket(bulk.clone())),
        ("bulk4", turns.ticket(bulk)),
        ("station1", turns.ticket(station.clone())),
        ("station2", turns.ticket(station)),
    ];
    assert_eq!(turns.waiting(), 6);
    assert_eq!(
        order_of_service(holder, tickets),
        ["bulk1", "station1", "bulk2", "station2", "bulk3", "bulk4"]
    );
    assert_eq!(turns.waiting(), 0);
}

#[test]
fn more_connections_do_not_give_an_identity_more_turns() {
    let turns = HsmTurns::new(1);
    let holder = first_turn(&turns);
    let mut tickets = Vec::new();
    for (label, port) in [("bulk-a", 1), ("bulk-b", 2), ("bulk-c", 3)] {
        for _ in 0..2 {
            tickets.push((label, turns.ticket(Caller::on("spiffe://bulk", conn(port)))));
        }
    }
    tickets.push((
        "station",
        turns.ticket(Caller::on("spiffe://station", conn(9))),
    ));
    let served = order_of_service(holder, tickets);
    // The station waits for one bulk batch, not for the six.
    assert_eq!(served[..2], ["bulk-a", "station"]);
    // The bulk identity's connections take turns among themselves.
    assert_eq!(
        served[2..],
        ["bulk-b", "bulk-c", "bulk-a", "bulk-b", "bulk-c"]
    );
}

#[test]
fn connections_of_one_identity_take_turns() {
    let turns = HsmTurns::new(1);
    let holder = first_turn(&turns);
    let bulk = Caller::on("spiffe://station", conn(1));
    let paced = Caller::on("spiffe://station", conn(2));
    let tickets = vec![
        ("bulk1", turns.ticket(bulk.clone())),
        ("bulk2", turns.ticket(bulk.clone())),
        ("bulk3", turns.ticket(bulk)),
        ("paced1", turns.ticket(paced)),
    ];
    assert_eq!(
        order_of_service(holder, tickets),
        ["bulk1", "paced1", "bulk2", "bulk3"]
    );
}

#[test]
fn a_cancelled_wait_passes_its_turn_on() {
    let turns = HsmTurns::new(1);
    let holder = first_turn(&turns);
    let gone = turns.ticket(Caller::on("spiffe://gone", None));
    let next = turns.ticket(Caller::on("spiffe://next", None));
    drop(gone);
    assert_eq!(order_of_service(holder, vec![("next", next)]), ["next"]);
    // Nothing is held any more: the turn is free again.
    assert!(matches!(
        turns.ticket(Caller::on("spiffe://later", None)),
        Ticket::Now(_)
    ));
}

#[test]
fn a_turn_granted_to_a_request_gone_since_comes_back() {
    let turns = HsmTurns::new(1);
    let holder = first_turn(&turns);
    let granted = turns.ticket(Caller::on("spiffe://a", None));
    let next = turns.ticket(Caller::on("spiffe://b", None));
    drop(holder); // the turn goes to `granted`, which nobody takes
    drop(granted);
    let mut next = next;
    assert!(next.try_take().is_some());
}

#[test]
fn the_capacity_bounds_the_batches_at_the_hsm() {
    let turns = HsmTurns::new(2);
    let a = turns.ticket(Caller::on("spiffe://a", None));
    let b = turns.ticket(Caller::on("spiffe://b", None));
    let mut c = turns.ticket(Caller::on("spiffe://c", None));
    assert!(matches!((&a, &b), (Ticket::Now(_), Ticket::Now(_))));
    assert!(c.try_take().is_none());
    turns.set_capacity(3);
    assert_eq!(turns.capacity(), 3);
    let c = c.try_take().expect("a third turn");
    turns.set_capacity(1);
    drop(a);
    drop(b);
    let mut d = turns.ticket(Caller::on("spiffe://d", None));
    assert!(d.try_take().is_none(), "one turn, held by c");
    drop(c);
    assert!(d.try_take().is_some());
}
