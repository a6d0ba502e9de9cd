//! Getting the senders ready: a genesis that funds them, or funding transactions from a dev
//! account (and the token deployed by a plain transaction); their current nonces.

use crate::{
    client::{Client, quantity},
    workload::{self, Account, Fees},
};
use alloy_consensus::TxEip1559;
use alloy_primitives::{Address, TxKind, U256};
use eyre::{WrapErr, bail, eyre};
use kestrel_benches::{TOKEN, TOKEN_BALANCE, TOKEN_RUNTIME_HEX, token_balance_slot};
use serde_json::{Map, Value, json};
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// Funding transactions in flight at once: below the pool's 4,096 per sender.
const FUND_CHUNK: usize = 2_000;
/// Longest wait for one chunk of funding transactions to be included.
const FUND_TIMEOUT: Duration = Duration::from_secs(120);
/// Calls per batch when reading per-account state (Kestrel takes up to 10,000).
pub const READ_BATCH: usize = 2_000;
/// What each sender holds in a genesis written by `--genesis-out`: 1,000 ETH.
const GENESIS_BALANCE_WEI: u128 = 1_000 * 1_000_000_000_000_000_000;

fn token_runtime() -> Vec<u8> {
    alloy_primitives::hex::decode(TOKEN_RUNTIME_HEX.trim()).expect("token runtime hex")
}

/// A geth genesis (Prague from genesis) funding `accounts` and the dev accounts, holding the
/// bench token at [`TOKEN`] with [`TOKEN_BALANCE`] for every sender.
pub fn write_genesis(
    path: &Path,
    accounts: &[Account],
    chain_id: u64,
    gas_limit: u64,
) -> eyre::Result<()> {
    let mut alloc = Map::new();
    let balance = json!({ "balance": format!("{GENESIS_BALANCE_WEI:#x}") });
    for (address, _) in kestrel_types::chain::dev_accounts() {
        alloc.insert(address.to_string(), balance.clone());
    }
    let mut storage = Map::new();
    for a in accounts {
        alloc.insert(a.address.to_string(), balance.clone());
        storage.insert(
            format!("{:#066x}", token_balance_slot(a.address)),
            json!(format!("{:#066x}", U256::from(TOKEN_BALANCE))),
        );
    }
    // totalSupply (slot 2), so the token's view of itself is consistent.
    storage.insert(
        format!("{:#066x}", U256::from(2)),
        json!(format!(
            "{:#066x}",
            U256::from(TOKEN_BALANCE) * U256::from(accounts.len())
        )),
    );
    alloc.insert(
        TOKEN.to_string(),
        json!({
            "balance": "0x0",
            "nonce": "0x1",
            "code": alloy_primitives::hex::encode_prefixed(token_runtime()),
            "storage": storage,
        }),
    );
    let genesis = json!({
        "config": {
            "chainId": chain_id,
            "homesteadBlock": 0, "eip150Block": 0, "eip155Block": 0, "eip158Block": 0,
            "byzantiumBlock": 0, "constantinopleBlock": 0, "petersburgBlock": 0,
            "istanbulBlock": 0, "berlinBlock": 0, "londonBlock": 0,
            "mergeNetsplitBlock": 0, "shanghaiTime": 0, "cancunTime": 0, "pragueTime": 0,
            "terminalTotalDifficulty": 0, "terminalTotalDifficultyPassed": true,
        },
        "nonce": "0x0",
        "timestamp": "0x0",
        "extraData": "0x",
        "gasLimit": format!("{gas_limit:#x}"),
        "difficulty": "0x0",
        "mixHash": format!("{:#066x}", 0),
        "coinbase": Address::ZERO.to_string(),
        "baseFeePerGas": "0x3b9aca00",
        "alloc": alloc,
    });
    std::fs::write(path, genesis.to_string())
        .wrap_err_with(|| format!("writing {}", path.display()))
}

pub fn funder(key_hex: Option<&str>) -> eyre::Result<Account> {
    let hex = key_hex.unwrap_or(kestrel_types::chain::DEV_PRIVATE_KEYS[0]);
    let bytes = alloy_primitives::hex::decode(hex).wrap_err("--funder-key is not hex")?;
    let key = secp256k1::SecretKey::from_slice(&bytes).wrap_err("--funder-key is not a key")?;
    Ok(Account::from_key(key))
}

/// Sends `fund_wei` to every account (and, if `token`, deploys the bench token and gives every
/// account [`TOKEN_BALANCE`]); returns the token's address once everything is included.
pub async fn fund(
    client: &mut Client,
    funder: &Account,
    accounts: &[Account],
    token: bool,
    chain_id: u64,
    fees: Fees,
    fund_wei: u128,
) -> eyre::Result<Address> {
    let mut nonce = quantity(
        &client
            .call(
                "eth_getTransactionCount",
                json!([funder.address, "pending"]),
            )
            .await?,
    )?;
    let token_address = funder.address.create(nonce);
    let tx = |nonce, to, value, input, gas_limit| TxEip1559 {
        chain_id,
        nonce,
        gas_limit,
        max_fee_per_gas: fees.max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        to,
        value,
        input,
        ..Default::default()
    };
    let mut raw = Vec::new();
    if token {
        let supply = U256::from(TOKEN_BALANCE) * U256::from(accounts.len());
        let init = workload::token_init_code(&token_runtime(), funder.address, supply);
        raw.push(workload::sign(
            &funder.key,
            tx(nonce, TxKind::Create, U256::ZERO, init, 1_000_000),
        ));
        nonce += 1;
    }
    for a in accounts {
        let value = U256::from(fund_wei);
        let eth = tx(
            nonce,
            TxKind::Call(a.address),
            value,
            Default::default(),
            workload::TRANSFER_GAS,
        );
        raw.push(workload::sign(&funder.key, eth));
        nonce += 1;
        if token {
            let input = workload::erc20_transfer_input(a.address, U256::from(TOKEN_BALANCE));
            let erc20 = tx(
                nonce,
                TxKind::Call(token_address),
                U256::ZERO,
                input,
                workload::ERC20_GAS,
            );
            raw.push(workload::sign(&funder.key, erc20));
            nonce += 1;
        }
    }
    let started = Instant::now();
    let first_nonce = nonce - raw.len() as u64;
    for (c, chunk) in raw.chunks(FUND_CHUNK).enumerate() {
        for part in chunk.chunks(READ_BATCH) {
            let answers = client
                .batch(
                    "eth_sendRawTransaction",
                    part.iter().map(|s| json!([s.raw_hex])),
                )
                .await?;
            if let Some(Err(e)) = answers.into_iter().find(Result::is_err) {
                bail!("funding transaction refused: {e}");
            }
        }
        let want = first_nonce + ((c + 1) * FUND_CHUNK).min(raw.len()) as u64;
        wait_for_nonce(client, funder.address, want).await?;
    }
    eprintln!(
        "funded {} accounts in {:.1}s",
        accounts.len(),
        started.elapsed().as_secs_f64()
    );
    // Every funding transaction must have worked: a reverted deploy or transfer would show up
    // later as a confusing verification failure.
    let last = raw.last().ok_or_else(|| eyre!("nothing to fund"))?;
    let receipt = client
        .call("eth_getTransactionReceipt", json!([last.hash]))
        .await?;
    if receipt["status"] != json!("0x1") {
        bail!("the last funding transaction failed: {receipt}");
    }
    Ok(token_address)
}

async fn wait_for_nonce(client: &mut Client, address: Address, want: u64) -> eyre::Result<()> {
    let deadline = Instant::now() + FUND_TIMEOUT;
    loop {
        let nonce = quantity(
            &client
                .call("eth_getTransactionCount", json!([address, "latest"]))
                .await?,
        )?;
        if nonce >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("funding stalled: {address} is at nonce {nonce}, waiting for {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next nonce of every account (pool included).
pub async fn nonces(client: &mut Client, accounts: &[Account]) -> eyre::Result<Vec<u64>> {
    let params = accounts.iter().map(|a| json!([a.address, "pending"]));
    read_each(client, "eth_getTransactionCount", params)
        .await?
        .iter()
        .map(quantity)
        .collect()
}

/// One call of `method` per element of `params`, in batches.
pub async fn read_each(
    client: &mut Client,
    method: &str,
    params: impl Iterator<Item = Value>,
) -> eyre::Result<Vec<Value>> {
    let params: Vec<Value> = params.collect();
    let mut out = Vec::with_capacity(params.len());
    for part in params.chunks(READ_BATCH) {
        for a in client.batch(method, part.iter().cloned()).await? {
            out.push(a.map_err(|e| eyre!("{method}: {e}"))?);
        }
    }
    Ok(out)
}
