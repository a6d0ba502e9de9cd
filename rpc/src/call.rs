//! `eth_call` and `eth_estimateGas`: a transaction request executed with revm on the state after
//! the committed head, in that block's environment, nothing committed.
//!
//! As geth does for calls: any nonce is accepted, senders may have code, and a request without
//! fee fields pays nothing and skips the base fee check. Gas is capped at [`CALL_GAS_CAP`], and
//! time by a [`Deadline`] (geth's `--rpc.evmtimeout`): gas alone lets a cheap loop run for
//! hundreds of milliseconds, and a batch of such calls for many seconds.

use crate::error::RpcError;
use alloy_consensus::Header;
use alloy_evm::{Evm, EvmEnv, EvmFactory, eth::EthEvmFactory, rpc::TryIntoTxEnv};
use alloy_primitives::{B256, Bytes, TxKind, U256};
use alloy_rpc_types_eth::TransactionRequest;
use alloy_sol_types::{Panic, Revert, SolError};
use kestrel_pipeline::evm::{BlockHashes, DbError, StateDb, evm_env};
use kestrel_storage::{ChainView, StateView, StorageError};
use kestrel_types::{ChainSpec, state::KECCAK_EMPTY};
use revm::{
    Database, Inspector,
    context::{
        TxEnv,
        result::{EVMError, ExecutionResult, HaltReason, InvalidTransaction},
    },
    database::{State, bal::EvmDatabaseError},
    interpreter::{InstructionResult, Interpreter},
};
use std::time::{Duration, Instant};

/// What an EVM over `State<StateDb>` fails with.
type CallEvmError = EVMError<EvmDatabaseError<DbError>>;

/// Most gas one call or estimate may use (geth's `--rpc.gascap` default).
pub const CALL_GAS_CAP: u64 = 50_000_000;
/// Gas of a plain transfer, the least any transaction needs.
const TX_GAS: u64 = 21_000;
/// Gas a value-carrying CALL hands the callee for free; part of geth's first estimate guess.
const CALL_STIPEND: u64 = 2_300;
/// An estimate may be this much (relative) above the least gas that works; bisecting further is
/// wasted work since wallets add a margin anyway (geth's `estimateGasErrorRatio`).
const ESTIMATE_ERROR_RATIO: f64 = 0.015;

/// Opcodes run between two readings of the clock: a reading costs about as much as a few dozen
/// cheap opcodes, and 1,024 of them take microseconds.
const STEPS_PER_CLOCK_READ: u64 = 1024;

/// What a call runs against: the committed head's header and the state after it, and when it
/// must stop.
pub(crate) struct CallContext<'a> {
    pub spec: &'a ChainSpec,
    pub header: &'a Header,
    pub state: &'a dyn StateView,
    pub hashes: &'a dyn BlockHashes,
    pub deadline: Deadline,
}

/// When a call (all the runs of an estimate together) must stop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    pub fn new(started: Instant, limit: Duration) -> Self {
        Self {
            at: started + limit,
            limit,
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }
}

/// Halts the EVM once the deadline has passed: the running frame, then each frame it returns
/// to, so the call unwinds at once. The run then reads as out of gas; [`check_deadline`] turns it
/// into geth's timeout error. With a step limit (tracing's opcode logger, whose log grows with
/// every step) it halts past that many steps as well.
pub(crate) struct DeadlineInspector {
    deadline: Deadline,
    steps: u64,
    steps_max: u64,
    expired: bool,
}

impl DeadlineInspector {
    pub fn new(deadline: Deadline) -> Self {
        Self {
            deadline,
            steps: 0,
            steps_max: u64::MAX,
            expired: false,
        }
    }

    pub fn with_steps_max(mut self, steps_max: u64) -> Self {
        self.steps_max = steps_max;
        self
    }

    /// A run's outcome, unless this inspector stopped it.
    pub fn outcome<T>(&self, outcome: Result<T, RpcError>) -> Result<T, RpcError> {
        if self.expired {
            return Err(RpcError::ExecutionTimeout(self.deadline.limit));
        }
        if self.steps > self.steps_max {
            return Err(RpcError::TraceTooLarge(self.steps_max));
        }
        outcome
    }

    /// Whether the deadline has passed, read now (between transactions of a replayed block).
    pub fn check_now(&mut self) -> bool {
        self.expired = self.expired || Instant::now() >= self.deadline.at;
        self.expired
    }
}

impl<CTX> Inspector<CTX> for DeadlineInspector {
    fn step(&mut self, interp: &mut Interpreter, _context: &mut CTX) {
        self.steps += 1;
        if !self.expired && self.steps.is_multiple_of(STEPS_PER_CLOCK_READ) {
            self.expired = Instant::now() >= self.deadline.at;
        }
        if self.expired || self.steps > self.steps_max {
            interp.halt(InstructionResult::OutOfGas);
        }
    }
}

/// A run's outcome, unless the deadline stopped it.
fn check_deadline<E, T>(evm: &E, outcome: Result<T, RpcError>) -> Result<T, RpcError>
where
    E: Evm<Inspector = DeadlineInspector>,
{
    evm.inspector().outcome(outcome)
}

/// `BLOCKHASH` for calls. They run on the head, whose ancestors are all committed.
pub(crate) struct ChainHashes<'a, C>(pub &'a C);

impl<C: ChainView + Sync> BlockHashes for ChainHashes<'_, C> {
    fn block_hash(&self, number: u64) -> Result<B256, StorageError> {
        Ok(self.0.block_hash(number)?.unwrap_or_default())
    }
}

/// Runs `request` and returns its output; a revert or halt is an error.
pub(crate) fn call(ctx: &CallContext<'_>, request: TransactionRequest) -> Result<Bytes, RpcError> {
    let env = call_env(ctx);
    let tx = tx_env(capped(request), &env)?;
    let mut db = state_db(ctx.state, ctx.hashes);
    let inspector = DeadlineInspector::new(ctx.deadline);
    let mut evm = EthEvmFactory::default().create_evm_with_inspector(&mut db, env, inspector);
    let outcome = execute(&mut evm, tx);
    match check_deadline(&evm, outcome)? {
        ExecutionResult::Success { output, .. } => Ok(output.into_data()),
        ExecutionResult::Revert { output, .. } => Err(RpcError::Reverted(output)),
        ExecutionResult::Halt { reason, .. } => Err(RpcError::Execution(halt_message(&reason))),
    }
}

/// The least gas limit (within [`ESTIMATE_ERROR_RATIO`]) with which `request` succeeds, found as
/// geth's estimator does: cap by the block gas limit, the sender's funds and [`CALL_GAS_CAP`]; run
/// at the cap; then bisect upwards from the gas the capped run used.
pub(crate) fn estimate_gas(
    ctx: &CallContext<'_>,
    request: TransactionRequest,
) -> Result<u64, RpcError> {
    let mut hi = request
        .gas
        .filter(|gas| *gas >= TX_GAS)
        .unwrap_or(ctx.header.gas_limit);
    let fee_cap = request.max_fee_per_gas.or(request.gas_price).unwrap_or(0);
    let has_data = request.input.input().is_some_and(|data| !data.is_empty());
    let env = call_env(ctx);
    let mut tx = tx_env(request, &env)?;
    let mut db = state_db(ctx.state, ctx.hashes);

    if fee_cap != 0 {
        let balance = db
            .basic(tx.caller)
            .map_err(db_error)?
            .map_or(U256::ZERO, |a| a.balance);
        if tx.value >= balance {
            return Err(RpcError::InsufficientFundsForTransfer);
        }
        let allowance = (balance - tx.value) / U256::from(fee_cap);
        hi = hi.min(allowance.saturating_to());
    }
    hi = hi.min(CALL_GAS_CAP);

    // A plain transfer needs exactly 21,000 unless something (an access list) adds to it.
    let plain_transfer = match tx.kind {
        TxKind::Call(to) if !has_data => db
            .basic(to)
            .map_err(db_error)?
            .is_none_or(|a| a.code_hash == KECCAK_EMPTY),
        _ => false,
    };
    let inspector = DeadlineInspector::new(ctx.deadline);
    let mut evm = EthEvmFactory::default().create_evm_with_inspector(&mut db, env, inspector);
    let mut run = |gas_limit: u64| {
        tx.gas_limit = gas_limit;
        let outcome = execute_with_gas(&mut evm, tx.clone());
        check_deadline(&evm, outcome)
    };
    if plain_transfer && run(TX_GAS)?.is_some_and(|r| r.is_success()) {
        return Ok(TX_GAS);
    }

    let (used, spent) = match run(hi)? {
        Some(ExecutionResult::Success { gas, .. }) => (gas.tx_gas_used(), gas.total_gas_spent()),
        Some(ExecutionResult::Revert { output, .. }) => return Err(RpcError::Reverted(output)),
        Some(ExecutionResult::Halt {
            reason: HaltReason::OutOfGas(_),
            ..
        })
        | None => {
            return Err(RpcError::GasRequiredExceedsAllowance(hi));
        }
        Some(ExecutionResult::Halt { reason, .. }) => {
            return Err(RpcError::Execution(halt_message(&reason)));
        }
    };
    // Below the gas the unconstrained run used, nothing can succeed.
    let mut lo = used - 1;
    // Most transactions succeed with what they spent before refunds plus the 1/64 that each call
    // level withholds; trying that first usually ends the search at once.
    let optimistic = (spent + CALL_STIPEND) * 64 / 63;
    if optimistic < hi {
        if run(optimistic)?.is_some_and(|r| r.is_success()) {
            hi = optimistic;
        } else {
            lo = optimistic;
        }
    }
    while lo + 1 < hi {
        if ((hi - lo) as f64 / hi as f64) < ESTIMATE_ERROR_RATIO {
            break;
        }
        // Skewed low: most transactions need little more than they used.
        let mid = ((hi + lo) / 2).min(lo * 2);
        if run(mid)?.is_some_and(|r| r.is_success()) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// revm's cache over a state view: what calls, estimates and traces run on.
pub(crate) fn state_db<'a>(
    state: &'a dyn StateView,
    hashes: &'a dyn BlockHashes,
) -> State<StateDb<'a>> {
    State::builder()
        .with_database(StateDb { state, hashes })
        .build()
}

/// `request` with its gas at most [`CALL_GAS_CAP`], and the cap if it gives none.
pub(crate) fn capped(mut request: TransactionRequest) -> TransactionRequest {
    request.gas = Some(
        request
            .gas
            .map_or(CALL_GAS_CAP, |gas| gas.min(CALL_GAS_CAP)),
    );
    request
}

/// The block's environment, with the checks geth skips for calls turned off.
pub(crate) fn call_env(ctx: &CallContext<'_>) -> EvmEnv {
    let mut env = evm_env(ctx.spec, ctx.header);
    env.cfg_env.disable_nonce_check = true;
    // Fees are checked against the base fee only when the request gives them (alloy-evm's
    // `CallFees` does that while converting the request).
    env.cfg_env.disable_base_fee = true;
    // Calls "from" a contract are how tools simulate contract-initiated calls.
    env.cfg_env.disable_eip3607 = true;
    // The gas cap, not the block gas limit, bounds a call: geth's call gas pool is unlimited.
    env.cfg_env.disable_block_gas_limit = true;
    env
}

pub(crate) fn tx_env(request: TransactionRequest, env: &EvmEnv) -> Result<TxEnv, RpcError> {
    request
        .try_into_tx_env(env)
        .map_err(|err| RpcError::Execution(err.to_string()))
}

/// Executes `tx`; a transaction that cannot run is an error.
fn execute<E>(evm: &mut E, tx: TxEnv) -> Result<ExecutionResult, RpcError>
where
    E: Evm<Tx = TxEnv, HaltReason = HaltReason, Error = CallEvmError>,
{
    let caller = tx.caller;
    evm.transact(tx)
        .map(|r| r.result)
        .map_err(|err| run_error(err, caller))
}

/// Why a transaction from `caller` could not run: geth's message if it was invalid.
pub(crate) fn run_error(err: CallEvmError, caller: alloy_primitives::Address) -> RpcError {
    match err {
        EVMError::Transaction(err) => RpcError::Execution(invalid_tx_message(&err, caller)),
        err => evm_error(err),
    }
}

/// Like [`execute`], but a gas limit below the intrinsic gas is a failed run (`None`), which the
/// estimator answers by raising the limit.
fn execute_with_gas<E>(evm: &mut E, tx: TxEnv) -> Result<Option<ExecutionResult>, RpcError>
where
    E: Evm<Tx = TxEnv, HaltReason = HaltReason, Error = CallEvmError>,
{
    let caller = tx.caller;
    match evm.transact(tx) {
        Ok(r) => Ok(Some(r.result)),
        Err(EVMError::Transaction(
            InvalidTransaction::CallGasCostMoreThanGasLimit { .. }
            | InvalidTransaction::GasFloorMoreThanGasLimit { .. },
        )) => Ok(None),
        Err(EVMError::Transaction(err)) => {
            Err(RpcError::Execution(invalid_tx_message(&err, caller)))
        }
        Err(err) => Err(evm_error(err)),
    }
}

pub(crate) fn evm_error(err: CallEvmError) -> RpcError {
    match err {
        EVMError::Database(err) => db_error(err),
        err => RpcError::Internal(err.to_string()),
    }
}

fn db_error(err: EvmDatabaseError<DbError>) -> RpcError {
    match err {
        EvmDatabaseError::Database(DbError(err)) => RpcError::Storage(err),
        err => RpcError::Internal(err.to_string()),
    }
}

/// geth's messages for transactions that cannot run, where wallets match on them.
fn invalid_tx_message(err: &InvalidTransaction, caller: alloy_primitives::Address) -> String {
    match err {
        InvalidTransaction::LackOfFundForMaxFee { fee, balance } => format!(
            "insufficient funds for gas * price + value: address {caller} have {balance} want {fee}"
        ),
        InvalidTransaction::CallGasCostMoreThanGasLimit {
            initial_gas,
            gas_limit,
        } => {
            format!("intrinsic gas too low: have {gas_limit}, want {initial_gas}")
        }
        InvalidTransaction::GasFloorMoreThanGasLimit {
            gas_floor,
            gas_limit,
        } => {
            format!("insufficient gas for floor data gas cost: have {gas_limit}, want {gas_floor}")
        }
        InvalidTransaction::GasPriceLessThanBasefee => {
            "max fee per gas less than block base fee".into()
        }
        InvalidTransaction::PriorityFeeGreaterThanMaxFee => {
            "max priority fee per gas higher than max fee per gas".into()
        }
        InvalidTransaction::CreateInitCodeSizeLimit => "max initcode size exceeded".into(),
        InvalidTransaction::InvalidChainId => "invalid chain id".into(),
        err => err.to_string(),
    }
}

/// geth's messages for the ways execution can halt.
pub(crate) fn halt_message(reason: &HaltReason) -> String {
    match reason {
        HaltReason::OutOfGas(_) => "out of gas".into(),
        HaltReason::OpcodeNotFound | HaltReason::InvalidFEOpcode => "invalid opcode".into(),
        HaltReason::InvalidJump => "invalid jump destination".into(),
        HaltReason::StackOverflow => "stack limit reached 1024 (1023)".into(),
        HaltReason::OutOfOffset => "return data out of bounds".into(),
        HaltReason::CreateCollision => "contract address collision".into(),
        HaltReason::CreateContractSizeLimit => "max code size exceeded".into(),
        HaltReason::CreateContractStartingWithEF => "invalid code: must not begin with 0xef".into(),
        HaltReason::CreateInitCodeSizeLimit => "max initcode size exceeded".into(),
        HaltReason::NonceOverflow => "nonce uint64 overflow".into(),
        HaltReason::CallTooDeep => "max call depth exceeded".into(),
        HaltReason::OutOfFunds => "insufficient balance for transfer".into(),
        HaltReason::StateChangeDuringStaticCall | HaltReason::CallNotAllowedInsideStatic => {
            "write protection".into()
        }
        reason => reason.to_string(),
    }
}

/// The message of a reverted call: geth's "execution reverted", with the reason when the revert
/// data is a Solidity `Error(string)` or `Panic(uint256)`.
pub(crate) fn revert_message(data: &[u8]) -> String {
    match revert_reason(data) {
        Some(reason) => format!("execution reverted: {reason}"),
        None => "execution reverted".into(),
    }
}

fn revert_reason(data: &[u8]) -> Option<String> {
    if let Ok(revert) = Revert::abi_decode(data) {
        return Some(revert.reason);
    }
    let panic = Panic::abi_decode(data).ok()?;
    Some(panic_reason(panic.code))
}

/// geth's descriptions of Solidity's panic codes.
fn panic_reason(code: U256) -> String {
    let known = match u64::try_from(code) {
        Ok(0x00) => "generic panic",
        Ok(0x01) => "assert(false)",
        Ok(0x11) => "arithmetic underflow or overflow",
        Ok(0x12) => "division or modulo by zero",
        Ok(0x21) => "enum overflow",
        Ok(0x22) => "invalid encoded storage byte array accessed",
        Ok(0x31) => "out-of-bounds array access; popping on an empty array",
        Ok(0x32) => "out-of-bounds access of an array or bytesN",
        Ok(0x41) => "out of memory",
        Ok(0x51) => "uninitialized function",
        _ => return format!("unknown panic code: {code:#x}"),
    };
    known.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{BASE_FEE, FakeChain, GAS_LIMIT};
    use alloy_primitives::{Address, address, hex};
    use alloy_rpc_types_eth::TransactionInput;

    const CALLER: Address = address!("00000000000000000000000000000000000ca11e");
    /// Returns the word 42.
    const RETURNER: Address = address!("0000000000000000000000000000000000000042");
    /// Reverts with `Error("insufficient balance")`.
    const REVERTER: Address = address!("00000000000000000000000000000000000000ee");
    /// Sets storage slot 0 to 1 (a fresh slot: 22,100 gas).
    const STORER: Address = address!("0000000000000000000000000000000000000055");
    /// Loops until out of gas.
    const LOOPER: Address = address!("0000000000000000000000000000000000000100");

    fn error_string(reason: &str) -> Bytes {
        Revert::from(reason).abi_encode().into()
    }

    fn chain() -> FakeChain {
        let mut chain = FakeChain::new();
        chain.set_account(CALLER, U256::from(10u64).pow(U256::from(18)), None);
        chain.set_account(
            RETURNER,
            U256::ZERO,
            Some(hex!("602a60005260206000f3").into()),
        );
        // CODECOPY the revert data (after this 12-byte prefix) to memory, then REVERT with it.
        let data = error_string("insufficient balance");
        let mut code = vec![
            0x60,
            data.len() as u8,
            0x60,
            12,
            0x60,
            0,
            0x39,
            0x60,
            data.len() as u8,
            0x60,
            0,
            0xfd,
        ];
        code.extend_from_slice(&data);
        chain.set_account(REVERTER, U256::ZERO, Some(code.into()));
        chain.set_account(STORER, U256::ZERO, Some(hex!("600160005500").into()));
        chain.set_account(LOOPER, U256::ZERO, Some(hex!("5b600056").into()));
        chain
    }

    fn with_ctx<T>(chain: &FakeChain, f: impl FnOnce(&CallContext<'_>) -> T) -> T {
        with_ctx_for(chain, Duration::from_secs(60), f)
    }

    /// A context whose calls may run for `limit`.
    fn with_ctx_for<T>(
        chain: &FakeChain,
        limit: Duration,
        f: impl FnOnce(&CallContext<'_>) -> T,
    ) -> T {
        let spec = ChainSpec::dev();
        let header = chain.blocks.last().unwrap().header.clone();
        let hashes = ChainHashes(chain);
        f(&CallContext {
            spec: &spec,
            header: &header,
            state: chain,
            hashes: &hashes,
            deadline: Deadline::new(Instant::now(), limit),
        })
    }

    fn request(from: Address, to: Address) -> TransactionRequest {
        TransactionRequest::default().from(from).to(to)
    }

    #[test]
    fn revert_reasons_are_decoded_as_geth_does() {
        assert_eq!(
            revert_message(&error_string("insufficient balance")),
            "execution reverted: insufficient balance"
        );
        assert_eq!(
            revert_message(&Panic::from(U256::from(0x11)).abi_encode()),
            "execution reverted: arithmetic underflow or overflow"
        );
        assert_eq!(
            revert_message(&Panic::from(U256::from(1)).abi_encode()),
            "execution reverted: assert(false)"
        );
        assert_eq!(
            revert_message(&Panic::from(U256::from(0x99)).abi_encode()),
            "execution reverted: unknown panic code: 0x99"
        );
        assert_eq!(revert_message(&[]), "execution reverted");
        // A custom error: no reason to show, the data says it all.
        assert_eq!(revert_message(&hex!("deadbeef0000")), "execution reverted");
        assert_eq!(
            revert_message(&hex!("08c379a0")),
            "execution reverted",
            "truncated Error(string)"
        );
    }

    #[test]
    fn reverted_call_is_code_3_with_the_data() {
        let chain = chain();
        let err = with_ctx(&chain, |ctx| call(ctx, request(CALLER, REVERTER))).unwrap_err();
        let object = jsonrpsee::types::ErrorObjectOwned::from(err);
        assert_eq!(object.code(), 3);
        assert_eq!(object.message(), "execution reverted: insufficient balance");
        let data: Bytes = serde_json::from_str(object.data().unwrap().get()).unwrap();
        assert_eq!(data, error_string("insufficient balance"));
    }

    #[test]
    fn call_returns_output_and_runs_from_anyone() {
        let chain = chain();
        let out = with_ctx(&chain, |ctx| call(ctx, request(CALLER, RETURNER))).unwrap();
        assert_eq!(out[..], B256::with_last_byte(42)[..]);
        // No sender, a sender with code, a wrong nonce: geth runs them all.
        let mut req = TransactionRequest::default().to(RETURNER);
        assert!(with_ctx(&chain, |ctx| call(ctx, req.clone())).is_ok());
        req = request(STORER, RETURNER).nonce(99);
        assert!(with_ctx(&chain, |ctx| call(ctx, req)).is_ok());
        // Calling an account without code returns nothing.
        assert_eq!(
            with_ctx(&chain, |ctx| call(ctx, request(CALLER, Address::ZERO))).unwrap(),
            Bytes::new()
        );
    }

    #[test]
    fn call_fee_and_funds_errors_are_geths() {
        let chain = chain();
        let poor = Address::repeat_byte(0x77);
        let req = request(poor, RETURNER).gas_price(BASE_FEE as u128);
        let err = with_ctx(&chain, |ctx| call(ctx, req)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "insufficient funds for gas * price + value: address {poor} have 0 want {}",
                CALL_GAS_CAP as u128 * BASE_FEE as u128
            )
        );
        assert_eq!(err.code(), -32000);
        let req = request(CALLER, RETURNER)
            .max_fee_per_gas(1)
            .max_priority_fee_per_gas(1);
        let err = with_ctx(&chain, |ctx| call(ctx, req)).unwrap_err();
        assert_eq!(err.to_string(), "max fee per gas less than block base fee");
        let err = with_ctx(&chain, |ctx| call(ctx, request(CALLER, LOOPER))).unwrap_err();
        assert_eq!(err.to_string(), "out of gas");
    }

    #[test]
    fn estimates() {
        let chain = chain();
        // A plain transfer is exactly 21,000.
        let transfer = request(CALLER, Address::repeat_byte(1)).value(U256::from(1));
        assert_eq!(
            with_ctx(&chain, |ctx| estimate_gas(ctx, transfer)).unwrap(),
            TX_GAS
        );

        // A fresh SSTORE: 21,000 + two PUSH1 + 22,100; the estimate may be up to 1.5% above.
        let exact = 21_000 + 6 + 22_100;
        let estimate = with_ctx(&chain, |ctx| estimate_gas(ctx, request(CALLER, STORER))).unwrap();
        assert!(
            (exact..=exact + exact * 15 / 1000).contains(&estimate),
            "{estimate}"
        );
        let at = |gas: u64| {
            with_ctx(&chain, |ctx| {
                call(ctx, request(CALLER, STORER).gas_limit(gas))
            })
        };
        assert!(at(estimate).is_ok());
        assert!(at(exact - 1).is_err());

        let err = with_ctx(&chain, |ctx| estimate_gas(ctx, request(CALLER, REVERTER))).unwrap_err();
        assert_eq!(
            (err.code(), err.to_string()),
            (3, "execution reverted: insufficient balance".into())
        );
        let err = with_ctx(&chain, |ctx| estimate_gas(ctx, request(CALLER, LOOPER))).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("gas required exceeds allowance ({GAS_LIMIT})")
        );
        let err = with_ctx(&chain, |ctx| {
            estimate_gas(ctx, request(CALLER, LOOPER).gas_limit(100_000))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "gas required exceeds allowance (100000)");
        // Data to an account without code costs the EIP-7623 floor: 21,000 + 10 per token (4 per
        // non-zero byte, 1 per zero byte).
        let data = TransactionInput::new(Bytes::from_static(&[1, 0]));
        let req = request(CALLER, Address::repeat_byte(1)).input(data);
        let floor = 21_000 + 10 * 5;
        let estimate = with_ctx(&chain, |ctx| estimate_gas(ctx, req)).unwrap();
        assert!(
            (floor..=floor + floor * 15 / 1000).contains(&estimate),
            "{estimate}"
        );
    }

    #[test]
    fn a_call_past_its_deadline_is_aborted_with_geths_message() {
        let chain = chain();
        // Far less than the loop's 30M gas takes on any machine: at 20 ms a release build on a
        // fast core ran the whole loop out of gas first.
        let limit = Duration::from_millis(1);
        let started = Instant::now();
        let err =
            with_ctx_for(&chain, limit, |ctx| call(ctx, request(CALLER, LOOPER))).unwrap_err();
        assert_eq!(err.to_string(), "execution aborted (timeout = 1ms)");
        // The estimate's runs share one deadline.
        let err = with_ctx_for(&chain, limit, |ctx| {
            estimate_gas(ctx, request(CALLER, LOOPER))
        })
        .unwrap_err();
        assert!(
            matches!(err, RpcError::ExecutionTimeout(l) if l == limit),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Within its time, the loop runs out of gas as before.
        let err = with_ctx(&chain, |ctx| call(ctx, request(CALLER, LOOPER))).unwrap_err();
        assert_eq!(err.to_string(), "out of gas");
    }

    #[test]
    fn estimates_are_capped_by_the_senders_funds() {
        let mut chain = chain();
        let sender = Address::repeat_byte(0x33);
        let fee = 10u128;
        chain.set_account(sender, U256::from(30_000 * fee), None);
        let req = request(sender, STORER)
            .max_fee_per_gas(fee)
            .max_priority_fee_per_gas(0);
        let mut chain_low_base = chain;
        // The request's fee cap must cover the block's base fee.
        chain_low_base
            .blocks
            .last_mut()
            .unwrap()
            .header
            .base_fee_per_gas = Some(1);
        let err = with_ctx(&chain_low_base, |ctx| estimate_gas(ctx, req.clone())).unwrap_err();
        assert_eq!(err.to_string(), "gas required exceeds allowance (30000)");
        let transfer = request(sender, Address::repeat_byte(1))
            .max_fee_per_gas(fee)
            .max_priority_fee_per_gas(0);
        assert_eq!(
            with_ctx(&chain_low_base, |ctx| estimate_gas(ctx, transfer.clone())).unwrap(),
            TX_GAS
        );
        let err = with_ctx(&chain_low_base, |ctx| {
            estimate_gas(ctx, transfer.value(U256::from(30_000 * fee)))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "insufficient funds for transfer");
    }
}
