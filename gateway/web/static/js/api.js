// The gateway's HTTP API as the console uses it: JSON calls and server-sent event streams,
// both with the bearer token (EventSource cannot send headers, so streams are read with fetch).

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
    this.onUnauthorized = () => {};
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.token}`, Accept: "application/json", ...extra };
  }

  async request(method, path, { body, headers } = {}) {
    const init = { method, headers: this.headers(headers) };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    let data = null;
    const text = await response.text();
    if (text) {
      try { data = JSON.parse(text); } catch { data = { detail: text.slice(0, 200) }; }
    }
    if (response.status === 401) this.onUnauthorized(data);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  get(path) { return this.request("GET", path); }
  post(path, body, headers) { return this.request("POST", path, { body, headers }); }

  // Follow an SSE stream until stop() is called; reconnects with backoff when it ends.
  // handlers: {event name: fn(data)}, plus optional onState(connected: bool).
  stream(path, handlers, onState = () => {}) {
    let stopped = false;
    let controller = null;
    let delay = 500;
    const run = async () => {
      while (!stopped) {
        controller = new AbortController();
        try {
          const response = await fetch(path, {
            headers: this.headers({ Accept: "text/event-stream" }),
            signal: controller.signal,
            cache: "no-store",
          });
          if (response.status === 401) { this.onUnauthorized(null); return; }
          if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
          onState(true);
          delay = 500;
          await readEvents(response.body, (event, data) => {
            const handler = handlers[event];
            if (handler) handler(data);
          });
        } catch (error) {
          if (stopped) return;
        }
        onState(false);
        if (stopped) return;
        await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random() / 2)));
        delay = Math.min(delay * 2, 10000);
      }
    };
    run();
    return { stop() { stopped = true; if (controller) controller.abort(); } };
  }
}

async function readEvents(body, dispatch) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) {
        let parsed;
        try { parsed = JSON.parse(data.join("\n")); } catch { continue; }
        dispatch(event, parsed);
      }
    }
  }
}
