//! Getting the senders ready: a genesis that funds them, or funding transactions from a dev
//! account (and the workload's contracts deployed by plain transactions); their current nonces.

use crate::{
    client::{Client, quantity},
    workload::{
        self, APPROVE_GAS, Account, Contracts, DEPLOY_GAS, ERC20_GAS, Fees, SYNC_GAS,
        SYNC_SELECTOR, Signed, TRANSFER_GAS, Workload,
    },
};
use alloy_consensus::TxEip1559;
use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use eyre::{WrapErr, bail, eyre};
use kestrel_benches::{
    MemState, TOKEN, TOKEN_BALANCE, TOKEN_RUNTIME_HEX, deploy_token_at,
    workload::{PAIR_RESERVE, TOKEN_A, TOKEN_B, allowance_slot, deploy_pairs, pair},
};
use kestrel_types::AccountInfo;
use serde_json::{Map, Value, json};
use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

/// Funding transactions in flight at once: below the pool's 4,096 per sender.
const FUND_CHUNK: usize = 2_000;
/// Longest wait for one chunk of funding transactions to be included (or, for the senders'
/// approvals, for the next one).
const FUND_TIMEOUT: Duration = Duration::from_secs(120);
/// Calls per batch when reading per-account state (Kestrel takes up to 10,000).
pub const READ_BATCH: usize = 2_000;
/// What each sender holds in a genesis written by `--genesis-out`: 1,000 ETH.
const GENESIS_BALANCE_WEI: u128 = 1_000 * 1_000_000_000_000_000_000;

fn token_runtime() -> Vec<u8> {
    alloy_primitives::hex::decode(TOKEN_RUNTIME_HEX.trim()).expect("token runtime hex")
}

/// A geth genesis (Prague from genesis) funding `accounts` and the dev accounts, holding the
/// bench token at [`TOKEN`] with [`TOKEN_BALANCE`] for every sender. For `swap`, also tokens A
/// and B, of which every sender holds [`TOKEN_BALANCE`], and `pairs` pairs of them, each with
/// [`PAIR_RESERVE`] of both, which every sender has approved for its own pair and the hot pair 0:
/// the state the in-memory executor bench swaps on (`kestrel_benches::workload::deploy_pairs`).
/// Plus `extra_accounts` funded accounts that send nothing: a large state around the senders.
pub fn write_genesis(
    path: &Path,
    accounts: &[Account],
    workload: Workload,
    pairs: usize,
    chain_id: u64,
    gas_limit: u64,
    extra_accounts: u64,
) -> eyre::Result<()> {
    let senders: Vec<Address> = accounts.iter().map(|a| a.address).collect();
    let mut state = MemState::default();
    deploy_token_at(&mut state, TOKEN, &senders);
    if workload == Workload::Swap {
        deploy_pairs(&mut state, &senders, senders.len(), pairs as u64);
        for token in [TOKEN_A, TOKEN_B] {
            for s in &senders {
                state
                    .storage
                    .insert((token, allowance_slot(*s, pair(0))), U256::MAX);
            }
        }
    }
    let funded = AccountInfo::with_balance(U256::from(GENESIS_BALANCE_WEI));
    for (address, _) in kestrel_types::chain::dev_accounts() {
        state.accounts.insert(address, funded);
    }
    for s in senders {
        state.accounts.insert(s, funded);
    }
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
    });
    write_json(path, &genesis, &genesis_alloc(&state), extra_accounts)
        .wrap_err_with(|| format!("writing {}", path.display()))
}

/// Writes `genesis` with `alloc` and `extra` more funded accounts as its `alloc`, streamed: a
/// 10,000,000-account genesis is about 700 MB of JSON, too much to build as one `Value`.
fn write_json(
    path: &Path,
    genesis: &Value,
    alloc: &Map<String, Value>,
    extra: u64,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let head = genesis.to_string();
    // The object without its closing brace, then the alloc as its last member.
    out.write_all(&head.as_bytes()[..head.len() - 1])?;
    out.write_all(b",\"alloc\":{")?;
    let mut first = true;
    for (address, entry) in alloc {
        if !std::mem::take(&mut first) {
            out.write_all(b",")?;
        }
        write!(out, "{}:{entry}", Value::String(address.clone()))?;
    }
    for i in 0..extra {
        if !std::mem::take(&mut first) {
            out.write_all(b",")?;
        }
        write!(
            out,
            "\"{}\":{{\"balance\":\"{:#x}\"}}",
            extra_account(i),
            EXTRA_BALANCE_WEI
        )?;
    }
    out.write_all(b"}}")?;
    out.flush()
}

/// Balance of each `--genesis-extra-accounts` account.
const EXTRA_BALANCE_WEI: u64 = 1_000_000_000;

/// The `i`th extra genesis account: an address nobody has the key of, apart from every sender's.
fn extra_account(i: u64) -> Address {
    let digest = alloy_primitives::keccak256(
        [b"kestrel-loadgen extra".as_slice(), &i.to_be_bytes()].concat(),
    );
    Address::from_slice(&digest[12..])
}

/// `state` as a genesis `alloc`, sorted by address and slot.
fn genesis_alloc(state: &MemState) -> Map<String, Value> {
    let mut storage: BTreeMap<Address, BTreeMap<U256, U256>> = BTreeMap::new();
    for ((address, slot), value) in &state.storage {
        storage.entry(*address).or_default().insert(*slot, *value);
    }
    let accounts: BTreeMap<Address, AccountInfo> =
        state.accounts.iter().map(|(a, i)| (*a, *i)).collect();
    let mut alloc = Map::new();
    for (address, info) in accounts {
        let mut entry = Map::new();
        entry.insert("balance".into(), json!(format!("{:#x}", info.balance)));
        if info.nonce != 0 {
            entry.insert("nonce".into(), json!(format!("{:#x}", info.nonce)));
        }
        if let Some(code) = state.codes.get(&info.code_hash) {
            entry.insert(
                "code".into(),
                json!(alloy_primitives::hex::encode_prefixed(code)),
            );
        }
        if let Some(slots) = storage.remove(&address) {
            let slots: Map<String, Value> = slots
                .into_iter()
                .map(|(k, v)| (format!("{k:#066x}"), json!(format!("{v:#066x}"))))
                .collect();
            entry.insert("storage".into(), Value::Object(slots));
        }
        alloc.insert(address.to_string(), Value::Object(entry));
    }
    alloc
}

pub fn funder(key_hex: Option<&str>) -> eyre::Result<Account> {
    let hex = key_hex.unwrap_or(kestrel_types::chain::DEV_PRIVATE_KEYS[0]);
    let bytes = alloy_primitives::hex::decode(hex).wrap_err("--funder-key is not hex")?;
    let key = secp256k1::SecretKey::from_slice(&bytes).wrap_err("--funder-key is not a key")?;
    Ok(Account::from_key(key))
}

/// What the funder does before a run.
pub struct FundPlan<'a> {
    pub funder: &'a Account,
    pub accounts: &'a [Account],
    pub workload: Workload,
    /// `swap`: pairs to deploy.
    pub pairs: usize,
    pub chain_id: u64,
    pub fees: Fees,
    pub fund_wei: u128,
}

/// The funder's transactions, signed at consecutive nonces.
struct FunderTxs<'a> {
    plan: &'a FundPlan<'a>,
    nonce: u64,
    signed: Vec<Signed>,
}

impl FunderTxs<'_> {
    fn push(&mut self, to: TxKind, value: U256, input: Bytes, gas_limit: u64) -> B256 {
        let tx = TxEip1559 {
            chain_id: self.plan.chain_id,
            nonce: self.nonce,
            gas_limit,
            max_fee_per_gas: self.plan.fees.max_fee_per_gas,
            max_priority_fee_per_gas: self.plan.fees.max_priority_fee_per_gas,
            to,
            value,
            input,
            ..Default::default()
        };
        self.nonce += 1;
        let signed = workload::sign(&self.plan.funder.key, tx);
        let hash = signed.hash;
        self.signed.push(signed);
        hash
    }

    /// Deploys `init`; the new contract's address.
    fn create(&mut self, init: Bytes) -> Address {
        let address = self.plan.funder.address.create(self.nonce);
        self.push(TxKind::Create, U256::ZERO, init, DEPLOY_GAS);
        address
    }

    fn call(&mut self, to: Address, input: Bytes, gas_limit: u64) -> B256 {
        self.push(TxKind::Call(to), U256::ZERO, input, gas_limit)
    }
}

/// Sends `fund_wei` to every account; for `erc20` and `mixed` deploys the bench token and gives
/// every account [`TOKEN_BALANCE`]; for `swap` deploys tokens A and B and the pairs, gives each
/// pair [`PAIR_RESERVE`] of both and `sync`s it, and gives every account [`TOKEN_BALANCE`] of
/// both. Returns where the contracts are once everything is included.
pub async fn fund(client: &mut Client, plan: &FundPlan<'_>) -> eyre::Result<Contracts> {
    let funder = plan.funder.address;
    let mut txs = FunderTxs {
        plan,
        nonce: quantity(
            &client
                .call("eth_getTransactionCount", json!([funder, "pending"]))
                .await?,
        )?,
        signed: Vec::new(),
    };
    let k = U256::from(plan.accounts.len());
    let mut contracts = Contracts::default();
    if plan.workload.needs_token() {
        let supply = U256::from(TOKEN_BALANCE) * k;
        contracts.token = txs.create(workload::token_init_code(&token_runtime(), funder, supply));
    }
    if plan.workload == Workload::Swap {
        let supply =
            U256::from(TOKEN_BALANCE) * k + U256::from(PAIR_RESERVE) * U256::from(plan.pairs);
        let init = workload::token_init_code(&token_runtime(), funder, supply);
        contracts.token_a = txs.create(init.clone());
        contracts.token_b = txs.create(init);
        let init = workload::pair_init_code(contracts.token_a, contracts.token_b);
        contracts.pairs = (0..plan.pairs).map(|_| txs.create(init.clone())).collect();
    }
    // Contract set-up, every step of which must work (a failed one would show up later as a
    // confusing verification failure).
    let mut setup: Vec<B256> = txs.signed.iter().map(|s| s.hash).collect();
    if plan.workload == Workload::Swap {
        let reserve = U256::from(PAIR_RESERVE);
        for &p in &contracts.pairs {
            for token in [contracts.token_a, contracts.token_b] {
                let input = workload::erc20_transfer_input(p, reserve);
                setup.push(txs.call(token, input, ERC20_GAS));
            }
            setup.push(txs.call(p, SYNC_SELECTOR.to_vec().into(), SYNC_GAS));
        }
    }
    let tokens = match plan.workload {
        Workload::Swap => vec![contracts.token_a, contracts.token_b],
        w if w.needs_token() => vec![contracts.token],
        _ => vec![],
    };
    for a in plan.accounts {
        let value = U256::from(plan.fund_wei);
        txs.push(TxKind::Call(a.address), value, Bytes::new(), TRANSFER_GAS);
        for &token in &tokens {
            let input = workload::erc20_transfer_input(a.address, U256::from(TOKEN_BALANCE));
            txs.call(token, input, ERC20_GAS);
        }
    }
    let raw = txs.signed;
    let started = Instant::now();
    let first_nonce = txs.nonce - raw.len() as u64;
    for (c, chunk) in raw.chunks(FUND_CHUNK).enumerate() {
        send_all(client, chunk).await.wrap_err("funding")?;
        let want = first_nonce + ((c + 1) * FUND_CHUNK).min(raw.len()) as u64;
        wait_for_nonce(client, funder, want).await?;
    }
    eprintln!(
        "funded {} accounts in {:.1}s",
        plan.accounts.len(),
        started.elapsed().as_secs_f64()
    );
    // Every contract set-up transaction and the last funding one must have worked.
    let last = raw.last().ok_or_else(|| eyre!("nothing to fund"))?;
    setup.push(last.hash);
    let receipts = read_each(
        client,
        "eth_getTransactionReceipt",
        setup.iter().map(|h| json!([h])),
    )
    .await?;
    if let Some(r) = receipts.iter().find(|r| r["status"] != json!("0x1")) {
        bail!("a funding transaction failed: {r}");
    }
    Ok(contracts)
}

/// `eth_sendRawTransaction` of every transaction, in batches; fails on the first refusal.
async fn send_all(client: &mut Client, txs: &[Signed]) -> eyre::Result<()> {
    for part in txs.chunks(READ_BATCH) {
        let answers = client
            .batch(
                "eth_sendRawTransaction",
                part.iter().map(|s| json!([s.raw_hex])),
            )
            .await?;
        if let Some(Err(e)) = answers.into_iter().find(Result::is_err) {
            bail!("transaction refused: {e}");
        }
    }
    Ok(())
}

/// `swap`: every sender approves, in both tokens, the pairs it swaps on (its own, and pair 0 if
/// `hot`), for an unlimited amount (Token.sol never spends down such an allowance).
pub async fn approve_pairs(
    client: &mut Client,
    accounts: &[Account],
    contracts: &Contracts,
    hot: bool,
    chain_id: u64,
    fees: Fees,
) -> eyre::Result<()> {
    let started = Instant::now();
    let nonces = nonces(client, accounts).await?;
    let signed: Vec<Signed> = workload::parallel_map(0..accounts.len(), |i| {
        let mut nonce = nonces[i];
        let mut out = Vec::new();
        for p in workload::swap_pairs(i, contracts.pairs.len(), hot) {
            for token in [contracts.token_a, contracts.token_b] {
                let tx = TxEip1559 {
                    chain_id,
                    nonce,
                    gas_limit: APPROVE_GAS,
                    max_fee_per_gas: fees.max_fee_per_gas,
                    max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
                    to: TxKind::Call(token),
                    value: U256::ZERO,
                    input: workload::approve_input(contracts.pairs[p], U256::MAX),
                    ..Default::default()
                };
                out.push(workload::sign(&accounts[i].key, tx));
                nonce += 1;
            }
        }
        out
    })
    .into_iter()
    .flatten()
    .collect();
    send_all(client, &signed).await.wrap_err("approving")?;
    let hashes: Vec<B256> = signed.iter().map(|s| s.hash).collect();
    wait_for_receipts(client, &hashes).await?;
    eprintln!(
        "{} approvals in {:.1}s",
        hashes.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Waits until every transaction in `hashes` has a successful receipt; fails if one failed or
/// none came for [`FUND_TIMEOUT`].
async fn wait_for_receipts(client: &mut Client, hashes: &[B256]) -> eyre::Result<()> {
    let mut done = 0;
    let mut progress = Instant::now();
    while done < hashes.len() {
        // Receipts come roughly in sending order: ask for the next batch only.
        let part = &hashes[done..(done + READ_BATCH).min(hashes.len())];
        let receipts = read_each(
            client,
            "eth_getTransactionReceipt",
            part.iter().map(|h| json!([h])),
        )
        .await?;
        let ready = receipts.iter().take_while(|r| !r.is_null()).count();
        if let Some(r) = receipts[..ready]
            .iter()
            .find(|r| r["status"] != json!("0x1"))
        {
            bail!("a set-up transaction failed: {r}");
        }
        if ready > 0 {
            done += ready;
            progress = Instant::now();
        } else if progress.elapsed() > FUND_TIMEOUT {
            bail!("set-up stalled: {} of {} included", done, hashes.len());
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// `swap`: the tokens and every pair have code (a genesis written with fewer `--pairs` or
/// without `--workload swap` does not).
pub async fn check_swap_contracts(client: &mut Client, contracts: &Contracts) -> eyre::Result<()> {
    let addresses: Vec<Address> = [contracts.token_a, contracts.token_b]
        .into_iter()
        .chain(contracts.pairs.iter().copied())
        .collect();
    let codes = read_each(
        client,
        "eth_getCode",
        addresses.iter().map(|a| json!([a, "latest"])),
    )
    .await?;
    for (a, code) in addresses.iter().zip(&codes) {
        if code.as_str().is_none_or(|c| c.len() <= 2) {
            bail!(
                "no contract at {a}: with --genesis-funded, write the genesis with \
                 --genesis-out --workload swap and at least as many --pairs"
            );
        }
    }
    Ok(())
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
        let deadline = Instant::now() + FUND_TIMEOUT;
        loop {
            let answers = client.batch(method, part.iter().cloned()).await?;
            // A node's per-IP call rate limit refuses the calls over it; a polite client waits
            // and asks again (reading 100,000 nonces at start-up passes the default 20,000/s).
            if answers
                .iter()
                .any(|a| matches!(a, Err(e) if e.starts_with(RATE_LIMITED)))
                && Instant::now() < deadline
            {
                tokio::time::sleep(RATE_LIMITED_PAUSE).await;
                continue;
            }
            for a in answers {
                out.push(a.map_err(|e| eyre!("{method}: {e}"))?);
            }
            break;
        }
    }
    Ok(out)
}

/// How a node words its per-IP call rate limit (`kestrel node --rpc-ip-calls-per-s`).
const RATE_LIMITED: &str = "rate limit exceeded";
/// How long to wait before asking again after a rate-limit refusal: a node's token bucket earns
/// back a batch of [`READ_BATCH`] calls in 100 ms at its default 20,000 calls/s.
const RATE_LIMITED_PAUSE: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed genesis is valid JSON holding the senders, the token, the dev accounts and
    /// the extra accounts, each once; the extra ones are distinct and funded.
    #[test]
    fn a_genesis_with_extra_accounts_is_one_json_object_with_all_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("genesis.json");
        let accounts = workload::derive_accounts(1, 3);
        write_genesis(
            &path,
            &accounts,
            Workload::Mixed,
            1,
            1337,
            30_000_000,
            1_000,
        )
        .unwrap();
        let genesis: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(genesis["gasLimit"], "0x1c9c380");
        let alloc = genesis["alloc"].as_object().unwrap();
        let dev = kestrel_types::chain::dev_accounts().len();
        assert_eq!(alloc.len(), dev + 3 + 1 + 1_000);
        for account in &accounts {
            assert!(alloc.contains_key(&account.address.to_string()));
        }
        assert!(
            alloc[&TOKEN.to_string()]["storage"]
                .as_object()
                .unwrap()
                .len()
                >= 3
        );
        for i in [0, 999] {
            let extra = &alloc[&extra_account(i).to_string()];
            assert_eq!(extra["balance"], format!("{EXTRA_BALANCE_WEI:#x}"));
        }
    }
}
