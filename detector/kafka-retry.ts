/**
 * Metadata calls right after a broker start or a topic creation can fail for a moment (coordinator loading, no
 * leader yet): those errors are retryable, and one-off calls retry them briefly instead of failing a command.
 */
import { isRetryable } from '../infra/errors.js';

export async function settled<T>(what: () => Promise<T>, attempts = 40): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await what();
    } catch (err) {
      if (!isRetryable(err) || i >= attempts) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}
