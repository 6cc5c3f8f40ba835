// Runs async tasks one at a time, in the order they were queued. A task that fails
// rejects only its own caller: the ones queued after it still run.
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(task: () => Promise<T>): Promise<T> {
    const next = this.tail.then(task);
    this.tail = next.catch(() => {});
    return next;
  }
}
