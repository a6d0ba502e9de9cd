//! A one-shot, notify-all event that any thread can fire and any number of tasks can await: the
//! shutdown, fired from the node's thread and awaited by every task of the runtime.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

#[derive(Default)]
pub(crate) struct Signal {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    fired: bool,
    next_key: u64,
    // Keyed so a dropped `Wait` (the losing branch of a `select!`) removes its waker instead of
    // leaving one behind per loop iteration.
    wakers: HashMap<u64, Waker>,
}

impl Signal {
    pub(crate) fn fire(&self) {
        let wakers = {
            let mut state = self.state.lock();
            state.fired = true;
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.state.lock().fired
    }

    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            key: None,
        }
    }
}

pub(crate) struct Wait<'a> {
    signal: &'a Signal,
    key: Option<u64>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.signal.state.lock();
        if state.fired {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let key = state.next_key;
                state.next_key += 1;
                key
            }
        };
        state.wakers.insert(key, cx.waker().clone());
        drop(state);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.signal.state.lock().wakers.remove(&key);
        }
    }
}
