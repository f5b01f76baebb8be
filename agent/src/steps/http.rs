//! `http`: one request whose status decides the outcome; also the HTTP half of `wait`.
//!
//! Network trouble (refused or reset connections, timeouts) and 5xx answers are worth another
//! attempt; an unexpected 4xx, a malformed URL or a certificate the server cannot change its
//! mind about are not. URLs appear in messages with passwords and secret-looking query values
//! redacted, since `${param}` may have put a token there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, StatusCode, Url};
use rollback_proto::OutputStream;
use rollback_proto::runbook::{HttpMethod, HttpStep};

use super::{StepContext, StepOutcome, describe_pairs, human, is_sensitive_name};

/// The most of a response body that goes to the output.
const BODY_LIMIT: usize = 64 * 1024;

/// Installs rustls' `ring` provider as the process default, unless one is installed already.
///
/// rustls 0.23 sees both `ring` and `aws-lc-rs` enabled through the dependency tree and then
/// refuses to pick one, panicking at the first TLS connection. Binaries call this first thing
/// in `main`; the step kinds call it too before building a client, which is then a no-op.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The request's texts after `${param}` expansion, checked.
struct Request {
    method: HttpMethod,
    url: Url,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Header values as written, for the dry-run description.
    header_texts: BTreeMap<String, String>,
    body: Option<String>,
}

pub(super) async fn run(ctx: &StepContext<'_>, step: &HttpStep) -> StepOutcome {
    let request = match expand(ctx, step) {
        Ok(request) => request,
        Err(outcome) => return outcome,
    };
    let timeout = ctx.timeout();
    if ctx.describes_only() {
        let description = describe(&request, &step.expect_status, timeout);
        let summary = format!(
            "send {} {}",
            method(request.method),
            redacted_url(&request.url)
        );
        return ctx.describe(&description, &summary).await;
    }
    let client = match client() {
        Ok(client) => client,
        Err(outcome) => return outcome,
    };
    let mut builder = client
        .request(method(request.method), request.url.clone())
        .headers(request.headers.into_iter().collect::<HeaderMap>())
        .timeout(timeout);
    if let Some(body) = request.body {
        builder = builder.body(body);
    }
    let exchange = async {
        let response = builder.send().await?;
        let status = response.status();
        let (body, truncated) = read_body(response).await?;
        Ok::<_, reqwest::Error>((status, body, truncated))
    };
    let result = tokio::select! {
        result = exchange => result,
        () = ctx.cancel.cancelled() => return ctx.cancelled(),
    };
    let (status, body, truncated) = match result {
        Ok(answer) => answer,
        Err(err) => {
            let (error, retryable) = describe_error(&err, &request.url, timeout);
            return StepOutcome::Failed { error, retryable };
        }
    };
    ctx.output
        .write(OutputStream::Stdout, &String::from_utf8_lossy(&body))
        .await;
    if truncated {
        ctx.output
            .write(
                OutputStream::Stdout,
                &format!(
                    "\n[response body truncated after {} KiB]\n",
                    BODY_LIMIT / 1024
                ),
            )
            .await;
    }
    status_outcome(status, &step.expect_status)
}

fn expand(ctx: &StepContext<'_>, step: &HttpStep) -> Result<Request, StepOutcome> {
    let url = parse_url("url", &ctx.expand("url", &step.url)?)?;
    let mut headers = Vec::with_capacity(step.headers.len());
    let mut header_texts = BTreeMap::new();
    for (name, value) in &step.headers {
        let field = format!("headers.{name}");
        let value = ctx.expand(&field, value)?;
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            StepOutcome::permanent(format!("`{field}`: `{name}` is not a valid header name"))
        })?;
        let mut header_value = HeaderValue::from_str(&value).map_err(|_| {
            StepOutcome::permanent(format!(
                "`{field}`: the value is not a valid header value (control characters?)"
            ))
        })?;
        header_value.set_sensitive(is_sensitive_name(name));
        headers.push((header_name, header_value));
        header_texts.insert(name.clone(), value);
    }
    let body = step
        .body
        .as_deref()
        .map(|body| ctx.expand("body", body))
        .transpose()?;
    Ok(Request {
        method: step.method,
        url,
        headers,
        header_texts,
        body,
    })
}

fn describe(request: &Request, expect_status: &[u16], timeout: Duration) -> String {
    let mut out = format!(
        "would send: {} {}\n",
        method(request.method),
        redacted_url(&request.url)
    );
    if !request.header_texts.is_empty() {
        out.push_str("with headers:\n");
        describe_pairs(&mut out, ": ", &request.header_texts);
    }
    if let Some(body) = &request.body {
        let _ = writeln!(out, "with body:\n{body}");
    }
    let _ = writeln!(
        out,
        "expecting status {}, within {}",
        expected(expect_status),
        human(timeout)
    );
    out
}

/// Parses a URL for `field`; only `http` and `https` are accepted.
pub(super) fn parse_url(field: &str, text: &str) -> Result<Url, StepOutcome> {
    let url = Url::parse(text)
        .map_err(|err| StepOutcome::permanent(format!("`{field}` is not a valid URL: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(StepOutcome::permanent(format!(
            "`{field}` must be an http or https URL, not `{}:`",
            url.scheme()
        )));
    }
    Ok(url)
}

/// The URL with its password and secret-looking query values replaced by `redacted`.
pub(super) fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("redacted"));
    }
    if shown
        .query_pairs()
        .any(|(name, _)| is_sensitive_name(&name))
    {
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_sensitive_name(&name) {
                    "redacted".to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// A client for one attempt.
///
/// Not shared across attempts: a pooled connection belongs to the tokio runtime that opened it,
/// and a client shared across runtimes (as in tests) fails on connections of a dead one.
pub(super) fn client() -> Result<Client, StepOutcome> {
    install_crypto_provider();
    Client::builder()
        .user_agent(concat!("rollback-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| StepOutcome::permanent(format!("cannot build an HTTP client: {err}")))
}

pub(super) fn method(method: HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
    }
}

/// Whether `status` is one of `expect`, or any 2xx when `expect` is empty.
pub(super) fn status_matches(status: StatusCode, expect: &[u16]) -> bool {
    if expect.is_empty() {
        status.is_success()
    } else {
        expect.contains(&status.as_u16())
    }
}

/// `2xx`, or `200, 204`.
pub(super) fn expected(expect: &[u16]) -> String {
    if expect.is_empty() {
        "2xx".to_owned()
    } else {
        expect
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn status_outcome(status: StatusCode, expect: &[u16]) -> StepOutcome {
    if status_matches(status, expect) {
        return StepOutcome::Succeeded {
            summary: format!("HTTP {status}"),
        };
    }
    // A server error, a request timeout and rate limiting are states of the server, not of
    // the request: the same request may succeed later.
    let retryable = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    StepOutcome::Failed {
        error: format!("HTTP {status} (expected {})", expected(expect)),
        retryable,
    }
}

/// Reads at most [`BODY_LIMIT`] bytes of the body; true when there was more.
async fn read_body(mut response: reqwest::Response) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = BODY_LIMIT - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The error for people (with the URL redacted) and whether another attempt may succeed.
pub(super) fn describe_error(err: &reqwest::Error, url: &Url, timeout: Duration) -> (String, bool) {
    let shown = redacted_url(url);
    if err.is_timeout() {
        return (format!("{shown}: timed out after {}", human(timeout)), true);
    }
    let mut text = format!("{shown}: ");
    let mut tls = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut first = true;
    while let Some(current) = source {
        // reqwest's own message would repeat the unredacted URL.
        let message = match current.downcast_ref::<reqwest::Error>() {
            Some(_) if first => kind_of(err).to_owned(),
            _ => current.to_string(),
        };
        if !first {
            text.push_str(": ");
        }
        text.push_str(&message);
        first = false;
        // io::Error hides the error it wraps from `source()`: look inside for rustls'.
        tls |= current.downcast_ref::<rustls::Error>().is_some()
            || current
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        source = current.source();
    }
    // A certificate or protocol mismatch, a bad request or a redirect loop stays as it is.
    let retryable = !(tls || err.is_builder() || err.is_redirect());
    (text, retryable)
}

fn kind_of(err: &reqwest::Error) -> &'static str {
    if err.is_connect() {
        "cannot connect"
    } else if err.is_redirect() {
        "too many redirects"
    } else if err.is_body() || err.is_decode() {
        "reading the response failed"
    } else if err.is_builder() {
        "invalid request"
    } else {
        "request failed"
    }
}

#[cfg(test)]
pub(crate) mod test_server {
    //! A tiny HTTP/1.1 server on loopback that answers from a script, for tests.

    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the server answers one request.
    #[derive(Debug, Clone)]
    pub enum Reply {
        /// A status and a body.
        Status(u16, String),
        /// Reads the request and never answers.
        Hang,
    }

    pub struct TestServer {
        pub url: String,
        /// Every request received, as text (head and body).
        pub requests: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestServer {
        /// Serves requests, the n-th (from 0) answered by `reply(n)`.
        pub async fn start(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = requests.clone();
            let reply = Arc::new(reply);
            let task = tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let Ok((mut socket, _)) = listener.accept().await else {
                        return;
                    };
                    let request = read_request(&mut socket).await;
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(request);
                        seen.len() - 1
                    };
                    match reply(n) {
                        Reply::Hang => held.push(socket),
                        Reply::Status(status, body) => {
                            let response = format!(
                                "HTTP/1.1 {status} Whatever\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = socket.write_all(response.as_bytes()).await;
                            let _ = socket.shutdown().await;
                        }
                    }
                }
            });
            Self {
                url,
                requests,
                task,
            }
        }

        pub fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    async fn read_request(socket: &mut tokio::net::TcpStream) -> String {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = socket.read(&mut buf).await {
            data.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&data);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if data.len() >= head_end + 4 + length {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&data).into_owned()
    }

    /// A loopback URL where nothing listens.
    pub async fn refused_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::test_server::{Reply, TestServer, refused_url};
    use super::*;

    fn http(url: &str, extra: &str) -> Fixture {
        Fixture::new(runbook(
            "token = \"s3cret\"\npath = \"health\"",
            &format!("kind = \"http\"\nurl = \"{url}\"\n{extra}"),
        ))
    }

    #[tokio::test]
    async fn a_2xx_succeeds_and_the_request_is_as_written() {
        install_crypto_provider();
        let server = TestServer::start(|_| Reply::Status(200, "all good".into())).await;
        let step = http(
            &format!("{}/${{path}}", server.url),
            "method = \"POST\"\nheaders = { Authorization = \"Bearer ${token}\", X-Mode = \"test\" }\nbody = \"{\\\"token\\\": \\\"${token}\\\"}\"",
        );
        let (outcome, chunks) = step.run().await;
        assert_eq!(succeeded(&outcome), "HTTP 200 OK");
        assert_eq!(text(&chunks, OutputStream::Stdout), "all good");
        let request = &server.requests()[0];
        assert!(
            request.starts_with("POST /health HTTP/1.1\r\n"),
            "{request}"
        );
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer s3cret"), "{request}");
        assert!(lower.contains("x-mode: test"), "{request}");
        assert!(request.ends_with("{\"token\": \"s3cret\"}"), "{request}");
    }

    #[tokio::test]
    async fn a_5xx_is_retryable() {
        install_crypto_provider();
        let server = TestServer::start(|_| Reply::Status(500, "boom".into())).await;
        let (outcome, chunks) = http(&server.url, "").run().await;
        let (error, retryable) = failed(&outcome);
        assert!(error.starts_with("HTTP 500"), "{error}");
        assert!(error.contains("expected 2xx"), "{error}");
        assert!(retryable);
        assert_eq!(text(&chunks, OutputStream::Stdout), "boom");
    }

    /// The outcome of a step with `extra` settings against a server answering `status`.
    async fn answered(status: u16, extra: &str) -> StepOutcome {
        install_crypto_provider();
        let server = TestServer::start(move |_| Reply::Status(status, String::new())).await;
        http(&server.url, extra).run().await.0
    }

    /// Expected statuses replace 2xx; of the unexpected ones, a request timeout and rate
    /// limiting may pass on another attempt, any other 4xx will not.
    #[tokio::test]
    async fn the_status_decides_the_outcome() {
        let permanent = StepOutcome::permanent;
        let transient = StepOutcome::transient;
        for (status, extra, expected) in [
            (404, "", permanent("HTTP 404 Not Found (expected 2xx)")),
            (
                408,
                "",
                transient("HTTP 408 Request Timeout (expected 2xx)"),
            ),
            (
                429,
                "",
                transient("HTTP 429 Too Many Requests (expected 2xx)"),
            ),
            (
                404,
                "expect_status = [404]",
                StepOutcome::Succeeded {
                    summary: "HTTP 404 Not Found".into(),
                },
            ),
            (
                200,
                "expect_status = [201, 204]",
                permanent("HTTP 200 OK (expected 201, 204)"),
            ),
        ] {
            assert_eq!(answered(status, extra).await, expected, "{status} {extra}");
        }
    }

    #[tokio::test]
    async fn connection_refused_is_retryable() {
        install_crypto_provider();
        let url = refused_url().await;
        let (outcome, _) = http(&format!("{url}/x?token=${{token}}"), "").run().await;
        let (error, retryable) = failed(&outcome);
        assert!(error.contains("cannot connect"), "{error}");
        assert!(retryable);
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("token=redacted"), "{error}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_retryably() {
        install_crypto_provider();
        let server = TestServer::start(|_| Reply::Hang).await;
        let started = std::time::Instant::now();
        let (outcome, _) = http(&server.url, "timeout = \"300ms\"").run().await;
        let (error, retryable) = failed(&outcome);
        assert!(error.contains("timed out after 300ms"), "{error}");
        assert!(retryable);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn cancellation_ends_a_hanging_request() {
        install_crypto_provider();
        let server = TestServer::start(|_| Reply::Hang).await;
        let step = http(&server.url, "");
        let cancel = step.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        });
        let (outcome, _) = tokio::time::timeout(Duration::from_secs(5), step.run())
            .await
            .expect("cancellation ends the attempt");
        assert!(failed(&outcome).0.starts_with("cancelled"));
    }

    #[tokio::test]
    async fn long_bodies_are_truncated() {
        install_crypto_provider();
        let server = TestServer::start(|_| Reply::Status(200, "b".repeat(100 * 1024))).await;
        let (outcome, chunks) = http(&server.url, "").run().await;
        assert!(outcome.is_success());
        let body = text(&chunks, OutputStream::Stdout);
        assert!(body.starts_with(&"b".repeat(BODY_LIMIT)));
        assert!(
            body.ends_with("[response body truncated after 64 KiB]\n"),
            "{}",
            &body[BODY_LIMIT..]
        );
    }

    #[tokio::test]
    async fn bad_urls_and_headers_are_permanent_and_named() {
        let (outcome, _) = http("not a url", "").run().await;
        let (error, retryable) = failed(&outcome);
        assert!(error.starts_with("`url` is not a valid URL"), "{error}");
        assert!(!retryable);
        let (outcome, _) = http("ftp://example.com/", "").run().await;
        assert!(failed(&outcome).0.contains("http or https"));
        let (outcome, _) = http("http://127.0.0.1/", "headers = { \"Bad Name\" = \"x\" }")
            .run()
            .await;
        assert!(failed(&outcome).0.contains("`headers.Bad Name`"));
        // The parser refuses undeclared parameters; expansion still guards against a runbook
        // whose parameters changed.
        let mut step = http("http://127.0.0.1/${path}", "");
        step.runbook.params.remove("path");
        let (outcome, _) = step.run().await;
        let (error, retryable) = failed(&outcome);
        assert!(
            error.starts_with("cannot expand `url`: `${path}`"),
            "{error}"
        );
        assert!(!retryable);
    }

    #[tokio::test]
    async fn dry_run_describes_with_secrets_redacted() {
        let server = TestServer::start(|_| Reply::Status(200, String::new())).await;
        let step = http(
            &format!(
                "http://user:pw@{}/${{path}}?token=${{token}}&verbose=1",
                &server.url[7..]
            ),
            "method = \"DELETE\"\nheaders = { Authorization = \"Bearer ${token}\", Accept = \"text/plain\" }\nbody = \"drop it\"\nexpect_status = [202]",
        );
        let (summary, described) = step.describe().await;
        assert!(server.requests().is_empty(), "a dry run sent the request");
        assert!(
            summary.starts_with("dry run: would send DELETE http://user:redacted@"),
            "{summary}"
        );
        assert!(!described.contains("s3cret"), "{described}");
        assert!(!described.contains(":pw@"), "{described}");
        assert!(
            described.contains("/health?token=redacted&verbose=1"),
            "{described}"
        );
        assert!(
            described.contains("Authorization: <redacted>"),
            "{described}"
        );
        assert!(described.contains("Accept: text/plain"), "{described}");
        assert!(described.contains("with body:\ndrop it\n"), "{described}");
        assert!(described.contains("expecting status 202"), "{described}");
    }
}
