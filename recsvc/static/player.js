/**
 * The recsvc web player: asks for a call's recording until it is ready, then plays it.
 *
 * Theory of operation. CONTRACT section 7 is the whole algorithm:
 *
 *   GET /api/recordings/file/{call_sid}   (Bearer token, or a signed link)
 *     200 / 206            -> play
 *     202                  -> wait Retry-After (clamped to 1..10 s), ask again
 *     404                  -> stop: not_found
 *     500                  -> stop: worker_offline
 *     400 / 401 / 403      -> stop: error
 *     network, 502/503/504 -> back off 1, 2, 4, 8 s (capped at 8), ask again
 *     total wait > maxWait -> stop: timeout
 *
 * Every request carries `Prefer: wait=N` (CONTRACT 5b) with N the whole
 * seconds left before maxWait, so the server may hold it instead of making
 * the player poll. A request is abandoned shortly after maxWait, so the
 * player stops within maxWait plus one request whatever the server does
 * (CONTRACT 8, invariant 3).
 *
 * When the file is ready the poll's body is not read: the fetch is aborted
 * as soon as the status is known, and the <audio> element fetches the bytes
 * itself. An <audio src> cannot send an Authorization header, so with a token
 * the player first trades it for a signed link (CONTRACT 6,
 * POST /api/recordings/{call_sid}/link); with a link it uses the link.
 *
 * The mounted element carries the state in `data-state` and in the class
 * `recsvc-player--<state>`; its child `.recsvc-player__message` (created when
 * absent) shows the message in Hebrew or English.
 */

export const STATES = Object.freeze([
  "waiting", "playing", "not_found", "worker_offline", "timeout", "error",
]);

const DEFAULT_MAX_WAIT_SECONDS = 180;
// How long past maxWait a held request may take to answer before it is
// abandoned: enough for the server's own hold to end and its answer to arrive.
const REQUEST_GRACE_MS = 2000;
// The link route answers at once; it is not part of waiting for the recording.
const LINK_TIMEOUT_MS = 15000;
const BACKOFF_CAP_SECONDS = 8;

// CONTRACT 7, the messages table (exact), plus the player's own wording for
// the states the table leaves to the player.
const MESSAGES = {
  he: {
    waiting: ({attempt, waited}) => `מכין את ההקלטה… (ניסיון ${attempt}, חיכינו ${waited} שניות)`,
    playing: () => "ההקלטה מוכנה",
    not_found: () => "ההקלטה לא נמצאה. אין כתובת הקלטה לשיחה זו",
    worker_offline: () => "שרת ההקלטות לא מגיב. אנא נסה שוב מאוחר יותר או פנה לתמיכה",
    timeout: ({waited}) => `ההקלטה עדיין בתהליך הכנה (חיכינו ${waited} שניות). זה יכול לקחת עד 3 דקות`,
    error: ({status, detail}) => joinSentence(
      status ? `לא ניתן לטעון את ההקלטה (HTTP ${status})` : "לא ניתן לטעון את ההקלטה", detail),
  },
  en: {
    waiting: ({attempt, waited}) => `Preparing the recording… (attempt ${attempt}, waited ${waited} s)`,
    playing: () => "The recording is ready.",
    not_found: () => "Recording not found: this call has no recording.",
    worker_offline: () => "The recording server is not responding. Try again later or contact support.",
    timeout: ({waited}) => `The recording is still being prepared (waited ${waited} seconds). This can take up to 3 minutes.`,
    error: ({status, detail}) => joinSentence(
      status ? `The recording could not be loaded (HTTP ${status})` : "The recording could not be loaded", detail),
  },
};

function joinSentence(head, detail) {
  return detail ? `${head}: ${detail}` : `${head}.`;
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

/** The player's reading of one answer's status (CONTRACT 7). */
export function outcomeForStatus(status) {
  if (status === 200 || status === 206) return "ready";
  if (status === 202) return "processing";
  if (status === 404) return "not_found";
  if (status === 500) return "worker_offline";
  if (status === 502 || status === 503 || status === 504) return "unavailable";
  return "error";
}

/**
 * Mount a player on `element` and start asking for the recording.
 *
 * Options: baseUrl ("" = this origin), callSid, token (Bearer) or link (a
 * signed URL from the link route, used instead of the token), lang ("he" or
 * "en"), maxWait (seconds, default 180), fetchImpl (default fetch), onState
 * (called with a snapshot {state, message, attempt, waitedSeconds, status}
 * whenever the state or the attempt changes).
 *
 * Returns {stop(), state, audio, finished}: `finished` resolves with the final
 * state once the player stops asking (a terminal state, or "stopped").
 */
export function mountPlayer(element, options = {}) {
  const {
    baseUrl = "", callSid, token, link, fetchImpl = fetch, onState,
  } = options;
  const lang = options.lang === "he" ? "he" : "en";
  const askedMaxWait = Number(options.maxWait ?? DEFAULT_MAX_WAIT_SECONDS);
  const maxWaitMs = (askedMaxWait > 0 ? askedMaxWait : DEFAULT_MAX_WAIT_SECONDS) * 1000;
  const base = String(baseUrl).replace(/\/+$/, "");
  const startedMs = performance.now();

  let state = "waiting";
  let attempt = 0;
  let lastStatus = null;
  let stopped = false;
  let audio = null;
  let inflight = null;        // AbortController of the request in flight
  let wakeSleeper = null;     // ends the current sleep early on stop()
  let ticker = null;
  let resolveFinished;
  const finished = new Promise((resolve) => { resolveFinished = resolve; });

  element.classList.add("recsvc-player");
  element.lang = lang;
  element.dir = lang === "he" ? "rtl" : "ltr";
  let messageElement = element.querySelector(".recsvc-player__message");
  if (!messageElement) {
    messageElement = document.createElement("p");
    messageElement.className = "recsvc-player__message";
    messageElement.setAttribute("role", "status");
    messageElement.setAttribute("aria-live", "polite");
    element.prepend(messageElement);
  }

  const elapsedMs = () => performance.now() - startedMs;
  const waitedSeconds = () => Math.round(elapsedMs() / 1000);

  function render(detail = {}) {
    const waited = state === "waiting" ? Math.floor(elapsedMs() / 1000) : waitedSeconds();
    const message = MESSAGES[lang][state]({attempt, waited, status: lastStatus, ...detail});
    element.dataset.state = state;
    for (const name of STATES) element.classList.toggle(`recsvc-player--${name}`, name === state);
    element.setAttribute("aria-busy", state === "waiting" ? "true" : "false");
    messageElement.textContent = message;
    return {state, message, attempt, waitedSeconds: waited, status: lastStatus};
  }

  function announce(detail) {
    const snapshot = render(detail);
    if (typeof onState === "function") {
      try { onState(snapshot); } catch (err) { console.error("recsvc player: onState failed", err); }
    }
  }

  function finish(finalState, detail = {}) {
    clearInterval(ticker);
    state = finalState;
    announce(detail);
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

  async function serverMessage(response) {
    try {
      const body = await response.json();
      return typeof body?.message === "string" ? body.message : "";
    } catch {
      return "";
    }
  }

  async function poll() {
    let failures = 0;
    for (;;) {
      const leftMs = maxWaitMs - elapsedMs();
      if (leftMs <= 0) return finish("timeout");         // CONTRACT 7: total wait over max_wait
      attempt += 1;
      announce();
      const headers = {};
      const wait = preferWaitSeconds(leftMs);
      if (wait > 0) headers["Prefer"] = `wait=${wait}`;  // CONTRACT 5b: never more than is left
      if (!link) headers["Authorization"] = `Bearer ${token}`;
      let answer;
      try {
        answer = await request(fileUrl, {headers}, leftMs + REQUEST_GRACE_MS);
      } catch (err) {
        if (stopped) return;
        failures += 1;                                   // a network error, or our own deadline
        await sleep(Math.min(backoffSeconds(failures) * 1000, maxWaitMs - elapsedMs()));
        if (stopped) return;
        continue;
      }
      if (stopped) return;
      const {response, controller} = answer;
      lastStatus = response.status;
      switch (outcomeForStatus(response.status)) {
        case "ready":
          controller.abort();                            // the <audio> element fetches the bytes
          return play();
        case "processing":
          failures = 0;
          await sleep(Math.min(retryAfterSeconds(response.headers.get("Retry-After")) * 1000,
                               maxWaitMs - elapsedMs()));
          if (stopped) return;
          continue;
        case "unavailable":
          failures += 1;
          await sleep(Math.min(backoffSeconds(failures) * 1000, maxWaitMs - elapsedMs()));
          if (stopped) return;
          continue;
        case "not_found":
          return finish("not_found");
        case "worker_offline":
          return finish("worker_offline");
        default:
          return finish("error", {detail: await serverMessage(response)});
      }
    }
  }

  async function signedLink() {
    // CONTRACT 6: <audio src> cannot send headers, so the token buys a signed link.
    const linkUrl = `${base}/api/recordings/${encodeURIComponent(callSid)}/link`;
    const {response} = await request(linkUrl, {
      method: "POST", headers: {Authorization: `Bearer ${token}`},
    }, LINK_TIMEOUT_MS);
    if (response.status !== 200) {
      lastStatus = response.status;
      return {failed: outcomeForStatus(response.status), detail: await serverMessage(response)};
    }
    const body = await response.json();
    if (typeof body?.url !== "string") return {failed: "error", detail: "no link in the answer"};
    return {url: absolute(body.url)};
  }

  async function play() {
    let source = fileUrl;
    if (!link) {
      let answer;
      try {
        answer = await signedLink();
      } catch (err) {
        if (stopped) return;
        return finish("error", {detail: String(err?.message ?? err)});
      }
      if (stopped) return;
      if (answer.failed) {
        const failed = answer.failed === "not_found" || answer.failed === "worker_offline"
          ? answer.failed : "error";
        return finish(failed, {detail: answer.detail});
      }
      source = answer.url;
    }
    audio = document.createElement("audio");
    audio.className = "recsvc-player__audio";
    audio.controls = true;
    audio.preload = "metadata";
    audio.addEventListener("error", () => {
      if (state === "playing" && !stopped) {
        const code = audio.error ? ` (media error ${audio.error.code})` : "";
        finish("error", {detail: `the audio could not be played${code}`});
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

  if (!link && !(callSid && token)) {
    finish("error", {detail: lang === "he" ? "חסרים מזהה שיחה או אסימון" : "no call or token given"});
  } else {
    ticker = setInterval(() => { if (state === "waiting" && !stopped) render(); }, 1000);
    poll().catch((err) => {
      if (!stopped) finish("error", {detail: String(err?.message ?? err)});
    });
  }

  return {
    stop,
    get state() { return state; },
    get audio() { return audio; },
    finished,
  };
}
