//! Injects the demo card's keys as the demo Guangzhou station, against `sscard-kms dev`.
//!
//! ```sh
//! cargo run --release -- dev                      # in one terminal
//! cargo run --example inject_card -- --data-dir ./kms-data
//! ```
//!
//! It connects with the station's dev certificate (`<data-dir>/pki/station.pem`), asks for every
//! key of demo card 1 as TR-31 blocks under the station's transport key, and then for the card
//! master key of the MF as a ready-made secure-messaging command. It prints each key's KCV and
//! delivery — never a clear key (it never has one).

use std::path::PathBuf;

use clap::Parser;
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::card_key_service_client::CardKeyServiceClient;

#[derive(Debug, Parser)]
struct Args {
    /// The dev server's data directory.
    #[arg(long, default_value = "./kms-data")]
    data_dir: PathBuf,
    /// The dev server.
    #[arg(long, default_value = "https://localhost:50051")]
    server: String,
    /// The card's ATR (hex); its last 8 bytes are the card factor.
    #[arg(long, default_value = "3B6D000080318065B086843202AD932A48")]
    atr: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let pki = args.data_dir.join("pki");
    let tls = sscard_kms::access::tls::ClientTls::from_files(
        &pki.join("ca.pem"),
        &pki.join("station.pem"),
        &pki.join("station.key"),
    )?;
    let channel = tonic::transport::Endpoint::from_shared(args.server.clone())?
        .tls_config(tls.config())?
        .connect()
        .await?;
    let mut client = CardKeyServiceClient::new(channel);
    let keys = sscard_kms::dev::test_keys()?;
    let demo = &keys.card[0];
    let card = pb::CardIdentity {
        card_identifier: demo.card_identifier.clone(),
        card_number: demo.card_number.clone(),
        social_security_number: demo.social_security_number.clone(),
        atr: hex::decode(&args.atr)?,
    };

    let response = client
        .inject_card_keys(pb::InjectCardKeysRequest {
            card: Some(card.clone()),
            template_id: demo.template.clone(),
            delivery: pb::DeliveryForm::Tr31 as i32,
            key_names: Vec::new(),
            challenges: Vec::new(),
        })
        .await?
        .into_inner();
    println!(
        "card {} ({}), TR-31 under the station's transport key:",
        demo.card_identifier, demo.template
    );
    for key in &response.keys {
        let kcv = key
            .kcv
            .as_ref()
            .map(|k| hex::encode_upper(&k.value))
            .unwrap_or_default();
        let block = match &key.form {
            Some(pb::delivered_key::Form::Tr31Block(b)) => b.as_str(),
            _ => "",
        };
        println!(
            "  {:<10} {:<5} KCV {kcv:<8} {block}",
            key.key_name, key.directory
        );
    }

    // Secure messaging: the card's challenge would come from GET CHALLENGE; a fixed one here.
    let mk = client
        .initialise_blank_card(pb::InitialiseBlankCardRequest {
            card: Some(card),
            template_id: demo.template.clone(),
            challenge: vec![0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0],
        })
        .await?
        .into_inner();
    if let Some(pb::DeliveredKey {
        key_name,
        form: Some(pb::delivered_key::Form::WriteKeyApdu(apdu)),
        ..
    }) = mk.master_key
    {
        println!("blank-card initialisation, WRITE KEY of {key_name}:");
        println!("  {}", hex::encode_upper(apdu));
    }
    Ok(())
}
