//! A lean JSON-RPC client: one HTTP/1.1 keep-alive connection per worker (hyper's connection
//! API), reconnecting when the server closed it. Standard Ethereum JSON-RPC only.

use eyre::{WrapErr, bail, eyre};
use http_body_util::{BodyExt, Full};
use hyper::{Request, body::Bytes, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::time::Duration;

/// Longest wait for one HTTP exchange (a large batch on a busy node).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Client {
    pub url: String,
    host_port: String,
    path: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(url: &str) -> eyre::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| eyre!("only http:// URLs are supported: {url}"))?;
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok(Self {
            url: url.to_string(),
            host_port: host_port.to_string(),
            path: path.to_string(),
            sender: None,
        })
    }

    async fn connect(&self) -> eyre::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.host_port)
            .await
            .wrap_err_with(|| format!("connecting to {}", self.url))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// POSTs `body` and returns the response body.
    ///
    /// A request is sent again, once, on a new connection only if it never left: the server
    /// may close an idle keep-alive connection just before it is used. One that failed after
    /// it was sent is not, since the node may have acted on it (a batch of transactions sent
    /// twice comes back "nonce too low" for what the first one admitted).
    pub async fn post(&mut self, body: Bytes) -> eyre::Result<Bytes> {
        for attempt in 0..2 {
            let mut sender = match self.sender.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect().await?,
            };
            let request = Request::post(self.path.as_str())
                .header(hyper::header::HOST, self.host_port.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))?;
            let exchange = async {
                if let Err(e) = sender.ready().await {
                    return Err(Failed::BeforeSending(e.into()));
                }
                let response = match sender.try_send_request(request).await {
                    Ok(response) => response,
                    Err(e) if e.message().is_some() => {
                        return Err(Failed::BeforeSending(e.into_error().into()));
                    }
                    Err(e) => return Err(Failed::AfterSending(e.into_error().into())),
                };
                let status = response.status();
                let bytes = (response.into_body().collect().await)
                    .map_err(|e| Failed::AfterSending(e.into()))?
                    .to_bytes();
                Ok((status, bytes))
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Ok((status, bytes))) => {
                    self.sender = Some(sender);
                    if !status.is_success() {
                        bail!(
                            "HTTP {status} from {}: {}",
                            self.url,
                            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                        );
                    }
                    return Ok(bytes);
                }
                Ok(Err(Failed::BeforeSending(_))) if attempt == 0 => {}
                Ok(Err(Failed::BeforeSending(e) | Failed::AfterSending(e))) => return Err(e),
                Err(_) => bail!("no answer from {} within {REQUEST_TIMEOUT:?}", self.url),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// One call; an error answer becomes an `Err` with the node's message.
    pub async fn call(&mut self, method: &str, params: Value) -> eyre::Result<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let bytes = self.post(Bytes::from(body.to_string())).await?;
        let mut value: Value = serde_json::from_slice(&bytes)?;
        result_of(&mut value).map_err(|m| eyre!("{method}: {m}"))
    }

    /// A batch of calls of one method; each answer is the result or the error message, in order.
    pub async fn batch(
        &mut self,
        method: &str,
        params: impl IntoIterator<Item = Value>,
    ) -> eyre::Result<Vec<Result<Value, String>>> {
        let calls: Vec<Value> = params
            .into_iter()
            .enumerate()
            .map(|(id, p)| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": p}))
            .collect();
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let n = calls.len();
        let bytes = self
            .post(Bytes::from(Value::Array(calls).to_string()))
            .await?;
        parse_batch(&bytes, n)
    }
}

/// How an exchange failed: before the request left (safe to send again), or after.
enum Failed {
    BeforeSending(eyre::Report),
    AfterSending(eyre::Report),
}

/// Takes `result` out of a response, or the error message.
pub fn result_of(response: &mut Value) -> Result<Value, String> {
    if let Some(err) = response.get("error") {
        return Err(err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("malformed error")
            .to_string());
    }
    Ok(response
        .get_mut("result")
        .map(Value::take)
        .unwrap_or(Value::Null))
}

/// Answers of a batch of `n` calls with ids `0..n`, put back in id order (servers may reorder).
pub fn parse_batch(bytes: &[u8], n: usize) -> eyre::Result<Vec<Result<Value, String>>> {
    let value: Value = serde_json::from_slice(bytes)?;
    let Value::Array(items) = value else {
        // A server refusing the whole batch answers with one error object.
        let mut value = value;
        let msg = result_of(&mut value).err().unwrap_or_default();
        bail!("batch refused: {msg}");
    };
    let mut out: Vec<Option<Result<Value, String>>> = (0..n).map(|_| None).collect();
    for mut item in items {
        let id = item
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| eyre!("batch answer without a numeric id"))? as usize;
        if id >= n {
            bail!("batch answer with unknown id {id}");
        }
        out[id] = Some(result_of(&mut item));
    }
    out.into_iter()
        .map(|r| r.ok_or_else(|| eyre!("batch answer missing")))
        .collect()
}

/// Parses a `0x` quantity.
pub fn quantity(value: &Value) -> eyre::Result<u64> {
    let s = value
        .as_str()
        .ok_or_else(|| eyre!("expected a hex quantity, got {value}"))?;
    u64::from_str_radix(s.trim_start_matches("0x"), 16).wrap_err_with(|| format!("quantity {s}"))
}

/// Parses a `0x` 256-bit quantity.
pub fn quantity_u256(value: &Value) -> eyre::Result<alloy_primitives::U256> {
    let s = value
        .as_str()
        .ok_or_else(|| eyre!("expected a hex quantity, got {value}"))?;
    alloy_primitives::U256::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| eyre!("quantity {s}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// Reads one HTTP request (headers and a Content-Length body); false if the peer closed.
    async fn read_request(stream: &mut tokio::net::TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    return true;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A node that takes a request and drops the connection without answering may have acted
    /// on it: the client reports the failure instead of sending the request a second time.
    #[tokio::test]
    async fn a_request_that_was_sent_is_not_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                if read_request(&mut stream).await {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                stream.shutdown().await.ok();
            }
        });
        let mut client = Client::new(&url).unwrap();
        let result = client.post(Bytes::from_static(b"[]")).await;
        assert!(result.is_err(), "no answer must be an error: {result:?}");
        // A second request, had one been sent, would have been read by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
