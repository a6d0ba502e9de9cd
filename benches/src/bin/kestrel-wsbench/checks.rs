//! The checks against the node's own answers over HTTP: the logs each subscriber should have received.

use super::*;

/// `eth_getLogs` for every follower of one side at once (a topic position with all their
/// accounts), split by account: each follower's expected logs, in chain order.
pub(super) async fn expected_logs(
    http: &mut Client,
    args: &Args,
    follows: &[Follow],
    from: u64,
    to: u64,
) -> eyre::Result<Expected> {
    let mut expected = Expected::new();
    if to < from {
        return Ok(expected);
    }
    for side in [Side::Sender, Side::Recipient] {
        let accounts: Vec<B256> = follows
            .iter()
            .filter(|f| f.side == side)
            .map(|f| B256::left_padding_from(f.account.as_slice()))
            .collect();
        if accounts.is_empty() {
            continue;
        }
        let topics = match side {
            Side::Sender => json!([transfer_topic(), accounts]),
            Side::Recipient => json!([transfer_topic(), null, accounts]),
        };
        let filter = json!({"address": args.token, "topics": topics,
            "fromBlock": format!("{from:#x}"), "toBlock": format!("{to:#x}")});
        let logs = http.call("eth_getLogs", json!([filter])).await?;
        for log in logs
            .as_array()
            .ok_or_else(|| eyre!("eth_getLogs: not a list"))?
        {
            let topic = &log["topics"][if side == Side::Sender { 1 } else { 2 }];
            let who: B256 = serde_json::from_value(topic.clone())?;
            expected
                .entry((side, Address::from_word(who)))
                .or_default()
                .push(log_key(log)?);
        }
    }
    Ok(expected)
}

pub(super) fn log_key(log: &Value) -> eyre::Result<LogKey> {
    Ok(LogKey {
        block: quantity(&log["blockNumber"])?,
        log_index: quantity(&log["logIndex"])?,
        tx: serde_json::from_value(log["transactionHash"].clone())?,
    })
}

/// The first `--exact-checks` followers' own filters, queried as they are: the union query and
/// its local split must agree with them.
pub(super) async fn exact_checks(
    http: &mut Client,
    args: &Args,
    follows: &[Follow],
    expected: &Expected,
    from: u64,
    to: u64,
    problems: &Mutex<Vec<String>>,
) -> eyre::Result<usize> {
    let mut done = 0;
    for follow in follows.iter().take(args.exact_checks) {
        if to < from {
            break;
        }
        let mut filter = follow.filter(args.token);
        filter["fromBlock"] = json!(format!("{from:#x}"));
        filter["toBlock"] = json!(format!("{to:#x}"));
        let logs = http.call("eth_getLogs", json!([filter])).await?;
        let got = logs
            .as_array()
            .ok_or_else(|| eyre!("eth_getLogs: not a list"))?
            .iter()
            .map(log_key)
            .collect::<eyre::Result<Vec<_>>>()?;
        let want = expected
            .get(&(follow.side, follow.account))
            .cloned()
            .unwrap_or_default();
        if got != want {
            problems.lock().push(format!(
                "eth_getLogs for {:?} {} gave {got:?}, the union query {want:?}",
                follow.side, follow.account
            ));
        }
        done += 1;
    }
    Ok(done)
}
