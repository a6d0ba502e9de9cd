//! EIP-7610: creating a contract at an address that has storage fails as a collision, as it does
//! at an address with code or a nonce. revm checks code and nonce and leaves storage to the
//! database, so [`StorageCollisions`] checks it, as an inspector's `create` hook, before revm
//! makes the creation's frame.
//!
//! Only a genesis allocation can give an account storage without code or a nonce: any other
//! account gets storage by running code, and that needs code (or an EIP-7702 delegation, which
//! needs a nonce). Chains without such an account ([`ChainSpec::storage_only_accounts`]) run
//! with the hook off: an inspected run pays a call per instruction. The parallel executor leaves
//! a block that touches such an account to the sequential one, so the rule has one
//! implementation.

use kestrel_storage::{StateView, StorageError};
use kestrel_types::ChainSpec;
use revm::{
    context::{ContextTr, JournalTr, journaled_state::account::JournaledAccountTr},
    inspector::Inspector,
    interpreter::{CreateInputs, CreateOutcome, Gas, InstructionResult, InterpreterResult},
    primitives::{Bytes, constants::CALL_STACK_LIMIT},
};

/// The inspector that fails creations at addresses with storage.
pub(crate) struct StorageCollisions<'a> {
    state: &'a dyn StateView,
    /// A storage error met in the hook, which cannot return one; the executor reports it.
    error: Option<StorageError>,
}

impl<'a> StorageCollisions<'a> {
    /// `state` is the state before the block. A storage-only account's storage cannot change
    /// within the block (see the module), so it answers for every transaction of the block.
    pub(crate) fn new(state: &'a dyn StateView) -> Self {
        Self { state, error: None }
    }

    /// Whether the chain needs the hook on: see the module.
    pub(crate) fn needed(spec: &ChainSpec) -> bool {
        !spec.storage_only_accounts().is_empty()
    }

    /// The storage error a hook met, if any: execution after it is not to be trusted.
    pub(crate) fn take_error(&mut self) -> Option<StorageError> {
        self.error.take()
    }
}

impl<CTX: ContextTr> Inspector<CTX> for StorageCollisions<'_> {
    fn create(&mut self, context: &mut CTX, inputs: &mut CreateInputs) -> Option<CreateOutcome> {
        // revm's order (`EthFrame::make_create_frame`): every check that fails before the
        // caller's nonce is bumped is left to revm, which fails the creation the same way.
        if context.journal().depth() > CALL_STACK_LIMIT as usize {
            return None;
        }
        let journal = context.journal_mut();
        // A database error here is met again, and reported, by revm's own loads.
        let caller = journal.load_account_mut(inputs.caller()).ok()?;
        let (balance, nonce) = (*caller.balance(), caller.nonce());
        drop(caller);
        if balance < inputs.value() || nonce == u64::MAX {
            return None;
        }
        let target = inputs.created_address(nonce);
        match self.state.has_storage(target) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(err) => {
                self.error = Some(err);
                return None;
            }
        }
        // What revm does up to its own collision check: the target's warm load and the
        // caller's nonce bump stay; the creation's gas is all spent, as for an invalid first
        // opcode.
        journal.load_account(target).ok()?;
        let mut caller = journal.load_account_mut(inputs.caller()).ok()?;
        assert!(caller.bump_nonce(), "a nonce below u64::MAX bumps");
        drop(caller);
        let gas = Gas::new_with_regular_gas_and_reservoir(inputs.gas_limit(), inputs.reservoir());
        Some(CreateOutcome::new(
            InterpreterResult::new(InstructionResult::CreateCollision, Bytes::new(), gas),
            None,
        ))
    }
}
