//! The latest value of something, for one reader that waits for it to change: what a
//! `tokio::sync::watch` channel does, without the eight wakers each of those keeps for
//! many readers (a pod worker and each container's supervisor hold one such value, and a
//! node holds thousands of them).

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// One reader: a permit is kept for it if it is not waiting yet.
    changed: Notify,
}

struct State<T> {
    value: T,
    version: u64,
    /// The sender is gone.
    closed: bool,
}

pub struct Sender<T>(Arc<Shared<T>>);

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

/// The sender went away.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

pub fn channel<T: Copy>(value: T) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            value,
            version: 0,
            closed: false,
        }),
        changed: Notify::new(),
    });
    let rx = Receiver {
        shared: shared.clone(),
        seen: 0,
    };
    (Sender(shared), rx)
}

impl<T: Copy> Sender<T> {
    /// Sets the value; the reader hears of it.
    pub fn send(&self, value: T) {
        self.send_if_modified(|v| {
            *v = value;
            true
        });
    }

    /// Changes the value in place; the reader hears of it if `change` says it changed.
    pub fn send_if_modified(&self, change: impl FnOnce(&mut T) -> bool) {
        let mut st = self.0.state.lock().expect("latest value");
        if change(&mut st.value) {
            st.version += 1;
            drop(st);
            self.0.changed.notify_one();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.state.lock().expect("latest value").closed = true;
        self.0.changed.notify_one();
    }
}

impl<T: Copy> Receiver<T> {
    /// The value now.
    pub fn get(&self) -> T {
        self.shared.state.lock().expect("latest value").value
    }

    /// Resolves when the value changed since this reader last looked (or the sender went).
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            {
                let st = self.shared.state.lock().expect("latest value");
                if st.version != self.seen {
                    self.seen = st.version;
                    return Ok(());
                }
                if st.closed {
                    return Err(Closed);
                }
            }
            self.shared.changed.notified().await;
        }
    }

    /// The value, once `ready` holds for it.
    pub async fn wait_for(&mut self, ready: impl Fn(&T) -> bool) -> Result<T, Closed> {
        loop {
            let value = self.get();
            if ready(&value) {
                return Ok(value);
            }
            self.changed().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_reader_hears_of_changes_and_of_the_senders_end() {
        let (tx, mut rx) = channel(1);
        tx.send_if_modified(|_| false);
        tx.send(2);
        tx.send(3);
        // Two sends before it looked: one change, the latest value.
        assert_eq!(rx.changed().await, Ok(()));
        assert_eq!(rx.get(), 3);
        let waiting = tokio::spawn(async move { rx.wait_for(|v| *v == 5).await });
        tx.send(4);
        tx.send(5);
        assert_eq!(waiting.await.unwrap(), Ok(5));
        let (tx, mut rx) = channel(0);
        drop(tx);
        assert_eq!(rx.changed().await, Err(Closed));
    }
}
