/**
 * The undo steps of an operation in progress: each step that changes the host pushes how to
 * take it back, and a failure runs them newest first. A step that fails stops the unwinding
 * (what is left is for recovery to find): a later step may only be safe after the earlier one.
 */
export class CleanupStack {
  private readonly steps: (() => Promise<unknown>)[] = [];

  push(undo: () => Promise<unknown>): void {
    this.steps.push(undo);
  }

  async unwind(): Promise<void> {
    for (let step = this.steps.pop(); step; step = this.steps.pop()) await step();
  }
}
