/**
 * The local service process: the service behind the tunnel (and, for the direct figures, reached
 * directly), in a process of its own as in real use, so a direct connection also crosses from
 * the load generator's process to the service's.
 */
import { announceReady, commonHandlers, serveParent } from "./ipc.mjs";
import { serviceStats, startService, stopService } from "./service.mjs";

const port = await startService();
announceReady({ port });
serveParent({
  ...commonHandlers,
  serviceStats,
  stop: () => {
    stopService();
    setImmediate(() => process.exit(0));
    return true;
  },
});
