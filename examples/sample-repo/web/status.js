// Renders the queue status page served by the HTTP reporter.
const formatDuration = (seconds) => {
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  return `${Math.floor(seconds / 60)}m ${Math.round(seconds % 60)}s`;
};

export function renderQueueTable(queues) {
  const rows = queues.map(
    (q) => `<tr><td>${q.name}</td><td>${q.pending}</td><td>${formatDuration(q.oldest)}</td></tr>`
  );
  return `<table>${rows.join("")}</table>`;
}

export class StatusPoller {
  constructor(url, intervalMs = 5000) {
    this.url = url;
    this.intervalMs = intervalMs;
  }

  async poll() {
    const response = await fetch(this.url);
    return response.json();
  }
}
