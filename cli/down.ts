/** `edr down`: stops what `edr up` started. */
export { down as command } from './up.js';
