/**
 * The recsvc web player: asks for a call's recording until it is ready, then plays it.
 *
 * Theory of operation. CONTRACT section 7 is the whole algorithm:
 *
 *   GET /api/recordings/file/{call_sid}   (Bearer token, or a signed link)
 *     200 / 206                          -> play
 *     202                                -> wait Retry-After (clamped to 1..10 s), ask again
 *     404 call_not_found                 -> stop: call_not_found
 *     any other 404                      -> stop: not_found
 *     500 worker_not_processing_queue    -> stop: worker_offline
 *     500 recording_download_failed      -> stop: download_failed
 *     any other 500                      -> stop: server_error
 *     400 / 401 / 403 (any other status) -> stop: error
 *     network, 502/503/504               -> back off 1, 2, 4, 8 s (capped at 8), ask again
 *     total wait > maxWait               -> stop: unavailable when the last answer was a
 *                                           network error, 502, 503 or 504; else timeout
 *
 * Every request carries `Prefer: wait=N` (CONTRACT 5b) with N the whole
 * seconds left before maxWait, so the server may hold it instead of making
 * the player poll. A wait is cut to the time left, and the request after a
 * cut wait is the last one; a request is abandoned shortly after maxWait. So
 * the player stops within maxWait plus one request whatever the server does
 * (CONTRACT 8, invariant 3), and maxWait 0 is exactly one request.
 *
 * When the file is ready the poll's body is not read: the fetch is aborted
 * as soon as the status is known, and the <audio> element fetches the bytes
 * itself. An <audio src> cannot send an Authorization header, so with a token
 * the player first trades it for a signed link (CONTRACT 6,
 * POST /api/recordings/{call_sid}/link); with a link it uses the link.
 *
 * What a person sees and hears. The mounted element carries the state in
 * `data-state` and in the class `recsvc-player--<state>`. Its child
 * `.recsvc-player__message` is the one live region (role=status,
 * aria-live=polite): it changes once per change of state, so a screen reader
 * announces "preparing", then the outcome, never a ticking counter. The
 * ticking counter (seconds waited, the server asked, what it last said) is
 * `.recsvc-player__progress`, which is not live. After a stop other than
 * playing, a "try again" button starts a new round. In Hebrew, text that came
 * from the server (a code, a URL, its own sentence) is set in
 * <bdi dir="ltr">, so it reads left to right inside the sentence.
 *
 * OUTCOME_MESSAGES below is a copy of recsvc/player/outcomes.py; a test parses it
 * (the block between its BEGIN and END lines is JSON) and holds it equal.
 */

export const STATES = Object.freeze([
  "waiting", "playing", "call_not_found", "not_found", "worker_offline", "download_failed",
  "server_error", "error", "unavailable", "timeout",
]);

const DEFAULT_MAX_WAIT_SECONDS = 180;
// How long past maxWait a held request may take to answer before it is
// abandoned: enough for the server's own hold to end and its answer to arrive.
const REQUEST_GRACE_MS = 2000;
// The link route answers at once; it is not part of waiting for the recording.
const LINK_TIMEOUT_MS = 15000;
const BACKOFF_CAP_SECONDS = 8;
const LTR_FIELDS = new Set(["answer", "detail", "url", "code", "callSid"]);

// BEGIN OUTCOME_MESSAGES (JSON; CONTRACT 7's messages table, X is {X}; `error` is ours)
const OUTCOME_MESSAGES = {
  "he": {
    "call_not_found": "השיחה לא נמצאה. בדקו את מזהה השיחה",
    "not_found": "ההקלטה לא נמצאה. אין כתובת הקלטה לשיחה זו",
    "worker_offline": "שרת ההקלטות לא מגיב. אנא נסה שוב מאוחר יותר או פנה לתמיכה",
    "timeout": "ההקלטה עדיין בתהליך הכנה (חיכינו {X} שניות). זה יכול לקחת עד 3 דקות",
    "download_failed": "לא הצלחנו להוריד את ההקלטה מהספק. נסו שוב מאוחר יותר",
    "unavailable": "שרת ההקלטות אינו זמין (ניסינו {X} שניות)",
    "server_error": "שגיאה בשרת ההקלטות. נסו שוב מאוחר יותר או פנו לתמיכה",
    "error": "לא ניתן לטעון את ההקלטה ({answer}).",
    "error_detail": "לא ניתן לטעון את ההקלטה ({answer}): {detail}"
  },
  "en": {
    "call_not_found": "Call not found: check the call ID.",
    "not_found": "Recording not found: this call has no recording.",
    "worker_offline": "The recording server is not responding. Try again later or contact support.",
    "timeout": "The recording is still being prepared (waited {X} seconds). This can take up to 3 minutes.",
    "download_failed": "The recording could not be downloaded from the provider. Try again later.",
    "unavailable": "The recording server is unavailable (tried for {X} seconds).",
    "server_error": "The recording server failed. Try again later or contact support.",
    "error": "The recording could not be loaded ({answer}).",
    "error_detail": "The recording could not be loaded ({answer}): {detail}"
  }
};
// END OUTCOME_MESSAGES

// The player's own words: the states the table leaves to the player, and its progress.
const WORDS = {
  he: {
    waiting: "מכינים את ההקלטה…",
    playing: "ההקלטה מוכנה",
    progress: "ניסיון {attempt}, חיכינו {waited} שניות. פונים אל {url}; נשמע לאחרונה: {heard}",
    nothing_yet: "עדיין כלום",
    processing: "{status} ניסיון {attempt}/{max}, העבודה {job}",
    jobs: {queued: "בתור", running: "בהורדה"},
    network: "שגיאת רשת",
    no_answer: "אין תשובה בזמן",
    retry: "נסו שוב",
    audio: "הקלטת השיחה {callSid}",
    missing: "חסרים מזהה שיחה או אסימון",
    media: "לא ניתן לנגן את ההקלטה",
    no_status: "ללא תשובה מהשרת",
  },
  en: {
    waiting: "Preparing the recording…",
    playing: "The recording is ready.",
    progress: "Attempt {attempt}, waited {waited} s. Asking {url}; last heard: {heard}",
    nothing_yet: "nothing yet",
    processing: "{status} attempt {attempt}/{max}, job {job}",
    jobs: {},
    network: "network error",
    no_answer: "no answer in time",
    retry: "Try again",
    audio: "Recording of call {callSid}",
    missing: "no call or token given",
    media: "the audio could not be played",
    no_status: "no answer from the server",
  },
};

/**
 * `template` with its {fields} filled into `element`: server text (LTR_FIELDS)
 * each in its own <bdi dir="ltr">, the rest as plain text. Returns the text.
 */
function fill(element, template, fields) {
  const nodes = [];
  for (const [i, piece] of template.split(/\{(\w+)\}/).entries()) {
    if (i % 2 === 0) {
      if (piece) nodes.push(document.createTextNode(piece));
    } else if (LTR_FIELDS.has(piece) && typeof fields[piece] === "string" && fields[piece]) {
      const bdi = document.createElement("bdi");
      bdi.dir = "ltr";
      bdi.textContent = String(fields[piece]);
      nodes.push(bdi);
    } else if (fields[piece] instanceof Node) {
      nodes.push(fields[piece]);
    } else {
      nodes.push(document.createTextNode(String(fields[piece] ?? "")));
    }
  }
  element.replaceChildren(...nodes);
  return element.textContent;
}

/** Seconds to wait after a 202: its Retry-After clamped to 1..10 (CONTRACT 7). */
export function retryAfterSeconds(headerValue, nowMs = Date.now()) {
  let seconds = NaN;
  const text = (headerValue ?? "").trim();
  if (/^\d+(\.\d+)?$/.test(text)) {
    seconds = Number(text);
  } else if (text) {
    // RFC 9110 also allows an HTTP date; recsvc sends seconds (CONTRACT 1).
    seconds = (Date.parse(text) - nowMs) / 1000;
  }
  if (!Number.isFinite(seconds)) seconds = 1;
  return Math.min(10, Math.max(1, seconds));
}

/** Seconds to wait before retry number `failures` (1-based) after a network error or 502/503/504. */
export function backoffSeconds(failures) {
  return Math.min(BACKOFF_CAP_SECONDS, 2 ** Math.max(0, failures - 1));
}

/** N for `Prefer: wait=N`: the whole seconds left, never more; 0 means "send no Prefer". */
export function preferWaitSeconds(leftMs) {
  return Math.max(0, Math.floor(leftMs / 1000));
}

/** The player's reading of one answer (CONTRACT 7): its status and, for 404 and 500, its error code. */
export function outcomeForStatus(status, code = "") {
  if (status === 200 || status === 206) return "ready";
  if (status === 202) return "processing";
  if (status === 404) return code === "call_not_found" ? "call_not_found" : "not_found";
  if (status === 500) {
    if (code === "worker_not_processing_queue") return "worker_offline";
    if (code === "recording_download_failed") return "download_failed";
    return "server_error";
  }
  if (status === 502 || status === 503 || status === 504) return "unavailable";
  return "error";
}

/**
 * Mount a player on `element` and start asking for the recording.
 *
 * Options: baseUrl ("" = this origin), callSid, token (Bearer) or link (a
 * signed URL from the link route, used instead of the token), lang ("he" or
 * "en"), maxWait (seconds, default 180; 0 is one request), fetchImpl
 * (default fetch), onState (called with a snapshot {state, message, attempt,
 * waitedSeconds, status} whenever the state or the attempt changes).
 *
 * Returns {stop(), retry(), state, audio, finished}: `finished` resolves with
 * the final state once the player stops asking (a stop, "playing", or
 * "stopped" after stop()); retry() starts a new round, and `finished` is then
 * that round's.
 */
export function mountPlayer(element, options = {}) {
  const {
    baseUrl = "", callSid, token, link, fetchImpl = fetch, onState,
  } = options;
  const lang = options.lang === "he" ? "he" : "en";
  const words = WORDS[lang];
  const askedMaxWait = Number(options.maxWait ?? DEFAULT_MAX_WAIT_SECONDS);
  const maxWaitMs = (askedMaxWait >= 0 ? askedMaxWait : DEFAULT_MAX_WAIT_SECONDS) * 1000;
  const base = String(baseUrl).replace(/\/+$/, "");
  const serverName = base || location.origin;

  let startedMs = performance.now();
  let state = "waiting";
  let attempt = 0;
  let lastStatus = null;
  let heard = null;           // the last answer in words, for the progress line
  let stopped = false;
  let round = 0;              // which round (mount, then each retry) is the current one
  let audio = null;
  let inflight = null;        // AbortController of the request in flight
  let wakeSleeper = null;     // ends the current sleep early on stop()
  let ticker = null;
  let resolveFinished;
  let finished;

  element.classList.add("recsvc-player");
  element.lang = lang;
  element.dir = lang === "he" ? "rtl" : "ltr";
  let messageElement = element.querySelector(".recsvc-player__message");
  if (!messageElement) {
    messageElement = document.createElement("p");
    messageElement.className = "recsvc-player__message";
    element.prepend(messageElement);
  }
  messageElement.setAttribute("role", "status");
  messageElement.setAttribute("aria-live", "polite");
  let progressElement = element.querySelector(".recsvc-player__progress");
  if (!progressElement) {
    progressElement = document.createElement("p");
    progressElement.className = "recsvc-player__progress";
    messageElement.after(progressElement);
  }
  const retryButton = document.createElement("button");
  retryButton.type = "button";
  retryButton.className = "recsvc-player__retry";
  retryButton.textContent = words.retry;
  retryButton.addEventListener("click", () => retry());

  const elapsedMs = () => performance.now() - startedMs;
  const waitedSeconds = () => Math.round(elapsedMs() / 1000);

  function showProgress() {
    if (state !== "waiting") {
      progressElement.replaceChildren();
      progressElement.hidden = true;
      return;
    }
    progressElement.hidden = false;
    const heardNode = document.createElement("span");
    fill(heardNode, heard ? heard.template : words.nothing_yet, heard ? heard.fields : {});
    fill(progressElement, words.progress,
         {attempt, waited: Math.floor(elapsedMs() / 1000), url: serverName, heard: heardNode});
  }

  // The live region changes here only, once per state (a new round counts as one).
  function render(detail = {}) {
    const waited = waitedSeconds();
    let message;
    if (state === "waiting" || state === "playing") {
      message = fill(messageElement, words[state], {});
    } else {
      const table = OUTCOME_MESSAGES[lang];
      const template = state === "error" && detail.detail ? table.error_detail : table[state];
      // `answer` is server text (left to right); without an answer it is the player's own words.
      const answer = lastStatus ? `HTTP ${lastStatus}${detail.code ? ` ${detail.code}` : ""}`
        : document.createTextNode(words.no_status);
      message = fill(messageElement, template, {X: waited, answer, detail: detail.detail ?? ""});
    }
    element.dataset.state = state;
    for (const name of STATES) element.classList.toggle(`recsvc-player--${name}`, name === state);
    element.setAttribute("aria-busy", state === "waiting" ? "true" : "false");
    showProgress();
    if (state === "waiting" || state === "playing") retryButton.remove();
    else if (!retryButton.isConnected) element.append(retryButton);
    return {state, message, attempt, waitedSeconds: waited, status: lastStatus};
  }

  function snapshot() {
    return {state, message: messageElement.textContent, attempt, waitedSeconds: waitedSeconds(), status: lastStatus};
  }

  function tell(shot) {
    if (typeof onState === "function") {
      try { onState(shot); } catch (err) { console.error("recsvc player: onState failed", err); }
    }
  }

  function finish(finalState, detail = {}) {
    clearInterval(ticker);
    state = finalState;
    tell(render(detail));
    resolveFinished(finalState);
  }

  function sleep(ms) {
    if (ms <= 0 || stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => { wakeSleeper = null; resolve(); }, ms);
      wakeSleeper = () => { clearTimeout(timer); wakeSleeper = null; resolve(); };
    });
  }

  const fileUrl = link ? absolute(link) : `${base}/api/recordings/file/${encodeURIComponent(callSid ?? "")}`;

  function absolute(url) {
    return /^[a-z][a-z0-9+.-]*:/i.test(url) ? url : `${base}${url}`;
  }

  async function request(url, init, timeoutMs) {
    const controller = new AbortController();
    inflight = controller;
    const deadline = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const response = await fetchImpl(url, {...init, signal: controller.signal, cache: "no-store"});
      return {response, controller};
    } finally {
      clearTimeout(deadline);
    }
  }

  async function jsonBody(response) {
    try {
      const body = await response.json();
      return body && typeof body === "object" ? body : {};
    } catch {
      return {};
    }
  }

  function heardAnswer(status, body) {
    const code = typeof body.error === "string" ? body.error : "";
    if (status === 202 && typeof body.job_status === "string") {
      const job = words.jobs[body.job_status] ?? body.job_status;
      return {template: words.processing,
              fields: {status, attempt: body.attempt, max: body.max_attempts, job}};
    }
    return {template: code ? "{status} {code}" : "{status}", fields: {status, code}};
  }

  async function poll() {
    const mine = round;
    const gone = () => stopped || mine !== round;   // stop(), or a newer round began
    let failures = 0;
    let lastRequest = false;
    for (;;) {
      const leftMs = maxWaitMs - elapsedMs();
      attempt += 1;
      tell(snapshot());
      showProgress();
      const headers = {};
      const wait = preferWaitSeconds(leftMs);
      if (wait > 0) headers["Prefer"] = `wait=${wait}`;  // CONTRACT 5b: never more than is left
      if (!link) headers["Authorization"] = `Bearer ${token}`;
      let answer = null;
      let outcome;
      let delayMs;
      let body = {};
      try {
        answer = await request(fileUrl, {headers}, Math.max(leftMs, 0) + REQUEST_GRACE_MS);
      } catch (err) {
        if (gone()) return;
        lastStatus = null;                             // a network error, or our own deadline
        heard = {template: err?.name === "AbortError" ? words.no_answer : words.network, fields: {}};
        outcome = "unavailable";
      }
      if (gone()) return;
      if (answer) {
        const {response, controller} = answer;
        lastStatus = response.status;
        if (response.status === 200 || response.status === 206) {
          controller.abort();                          // the <audio> element fetches the bytes
          return play(gone);
        }
        body = await jsonBody(response);
        if (gone()) return;
        outcome = outcomeForStatus(response.status, typeof body.error === "string" ? body.error : "");
        heard = heardAnswer(response.status, body);
      }
      const code = typeof body.error === "string" ? body.error : "";
      if (outcome === "processing") {
        failures = 0;
        delayMs = retryAfterSeconds(answer.response.headers.get("Retry-After")) * 1000;
      } else if (outcome === "unavailable") {
        failures += 1;
        delayMs = backoffSeconds(failures) * 1000;
      } else if (outcome === "error") {
        return finish("error", {code, detail: typeof body.message === "string" ? body.message : ""});
      } else {
        return finish(outcome, {code});
      }
      const left = maxWaitMs - elapsedMs();
      if (lastRequest || left <= 0) {
        // CONTRACT 7: an unreachable server is unavailable; one still preparing is a timeout.
        return finish(outcome === "unavailable" ? "unavailable" : "timeout");
      }
      if (delayMs >= left) {
        delayMs = left;
        lastRequest = true;
      }
      showProgress();
      await sleep(delayMs);
      if (gone()) return;
    }
  }

  async function signedLink() {
    // CONTRACT 6: <audio src> cannot send headers, so the token buys a signed link.
    const linkUrl = `${base}/api/recordings/${encodeURIComponent(callSid)}/link`;
    const {response} = await request(linkUrl, {
      method: "POST", headers: {Authorization: `Bearer ${token}`},
    }, LINK_TIMEOUT_MS);
    const body = await jsonBody(response);
    if (response.status !== 200) {
      lastStatus = response.status;
      const code = typeof body.error === "string" ? body.error : "";
      return {failed: outcomeForStatus(response.status, code), code,
              detail: typeof body.message === "string" ? body.message : ""};
    }
    if (typeof body.url !== "string") return {failed: "error", detail: "no link in the answer"};
    return {url: absolute(body.url)};
  }

  async function play(gone) {
    let source = fileUrl;
    if (!link) {
      let answer;
      try {
        answer = await signedLink();
      } catch (err) {
        if (gone()) return;
        return finish("error", {detail: String(err?.message ?? err)});
      }
      if (gone()) return;
      if (answer.failed) {
        const failed = STATES.includes(answer.failed) ? answer.failed : "error";
        return finish(failed, {code: answer.code, detail: answer.detail});
      }
      source = answer.url;
    }
    audio = document.createElement("audio");
    audio.className = "recsvc-player__audio";
    audio.controls = true;
    audio.preload = "metadata";
    audio.setAttribute("aria-label", words.audio.replace("{callSid}", callSid || ""));
    audio.addEventListener("error", () => {
      if (state === "playing" && !stopped) {
        const code = audio.error ? ` (media error ${audio.error.code})` : "";
        finish("error", {detail: `${words.media}${code}`});
      }
    });
    audio.src = source;
    element.append(audio);
    finish("playing");
  }

  function stop() {
    if (stopped) return;
    stopped = true;
    clearInterval(ticker);
    if (inflight) inflight.abort();
    if (wakeSleeper) wakeSleeper();
    resolveFinished(state === "waiting" ? "stopped" : state);
  }

  /** A new round from the start: the same call, a fresh maxWait. */
  function start() {
    finished = new Promise((resolve) => { resolveFinished = resolve; });
    round += 1;
    startedMs = performance.now();
    state = "waiting";
    attempt = 0;
    lastStatus = null;
    heard = null;
    stopped = false;
    if (audio) { audio.remove(); audio = null; }
    if (!link && !(callSid && token)) {
      finish("error", {detail: words.missing});
      return;
    }
    tell(render());
    const mine = round;
    ticker = setInterval(() => { if (state === "waiting" && !stopped) showProgress(); }, 1000);
    poll().catch((err) => {
      if (!stopped && mine === round) finish("error", {detail: String(err?.message ?? err)});
    });
  }

  function retry() {
    if (state === "waiting" && !stopped) return;
    stop();
    start();
    // The button leaves with the stop; keyboard focus goes to the status, not to the page's start.
    messageElement.tabIndex = -1;
    messageElement.focus();
  }

  start();

  return {
    stop,
    retry,
    get state() { return state; },
    get audio() { return audio; },
    get finished() { return finished; },
  };
}
