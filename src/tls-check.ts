import type { SecureContextOptions } from "node:tls";
import { ErrorCodes, toTunnelError } from "./errors.js";
import { cryptoModule, tlsModule } from "./lazy-builtins.js";

/**
 * Throws INVALID_OPTION for TLS options a server or client could not use. OpenSSL quietly drops a
 * key that does not match the certificate (every handshake would then fail), so that is checked
 * here.
 */
export function checkSecureContext(options: SecureContextOptions, name: string): void {
  try {
    tlsModule().createSecureContext(options);
    const { key, cert, passphrase } = options;
    if (!key || !cert || Array.isArray(key) || Array.isArray(cert)) return;
    const { createPrivateKey, X509Certificate } = cryptoModule();
    const privateKey = createPrivateKey(
      typeof key === "string" || Buffer.isBuffer(key)
        ? { key, passphrase }
        : { key: key as Buffer },
    );
    if (!new X509Certificate(cert).checkPrivateKey(privateKey)) {
      throw new Error("the key does not match the certificate");
    }
  } catch (err) {
    throw toTunnelError(err, ErrorCodes.INVALID_OPTION, `${name} options are unusable`);
  }
}
