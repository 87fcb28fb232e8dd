#!/usr/bin/env bash
# Certificates for the webhook without any operator: generates a CA and a serving certificate for
# the webhook's Service, stores them in the Secret the Deployment mounts, and puts the CA into the
# caBundle of every entry of the MutatingWebhookConfiguration.
#
#   kubectl apply -k deploy/webhook && hack/webhook-certs.sh
#
# Re-run to rotate (before DAYS run out). Rotation never leaves a window where the API server and
# the webhook disagree: caBundle first trusts the new CA *and* the previous one, then the Secret
# changes (the server reloads it in place within kubelet's sync period), and the next rotation
# drops the oldest CA. Needs openssl, kubectl and base64; KUBECONFIG/--context as for kubectl.
set -euo pipefail

NAMESPACE=${NAMESPACE:-modelcar-prefetcher-webhook}
SERVICE=${SERVICE:-modelcar-prefetcher-webhook}
SECRET=${SECRET:-modelcar-prefetcher-webhook-tls}
WEBHOOK_CONFIG=${WEBHOOK_CONFIG:-modelcar-prefetcher-webhook}
DAYS=${DAYS:-365}
KUBECTL=${KUBECTL:-kubectl}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$DAYS" \
  -subj "/CN=${SERVICE}-ca-$(date -u +%Y%m%d%H%M%S)" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=${SERVICE}.${NAMESPACE}.svc" -keyout tls.key -out tls.csr 2>/dev/null
cat >ext.cnf <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:${SERVICE},DNS:${SERVICE}.${NAMESPACE},DNS:${SERVICE}.${NAMESPACE}.svc,DNS:${SERVICE}.${NAMESPACE}.svc.cluster.local
EOF
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" \
  -extfile ext.cnf -out tls.crt 2>/dev/null
openssl verify -CAfile ca.crt tls.crt >/dev/null

# 1. caBundle: the new CA followed by the newest CA already trusted (if any), for every entry.
if ! "$KUBECTL" get mutatingwebhookconfiguration "$WEBHOOK_CONFIG" >/dev/null; then
  echo "webhook-certs: MutatingWebhookConfiguration $WEBHOOK_CONFIG not found; apply deploy/webhook first" >&2
  exit 1
fi
entries=$("$KUBECTL" get mutatingwebhookconfiguration "$WEBHOOK_CONFIG" -o jsonpath='{range .webhooks[*]}{.name}{"\n"}{end}' | wc -l)
current=$("$KUBECTL" get mutatingwebhookconfiguration "$WEBHOOK_CONFIG" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
cp ca.crt bundle.pem
if [ -n "$current" ]; then
  # Keep only the first certificate of the current bundle: the CA in use until now.
  printf '%s' "$current" | base64 -d | awk '{print} /-----END CERTIFICATE-----/{exit}' >>bundle.pem
fi
bundle=$(base64 <bundle.pem | tr -d '\n')
patch="["
for ((i = 0; i < entries; i++)); do
  [ "$i" -gt 0 ] && patch+=","
  patch+="{\"op\":\"add\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$bundle\"}"
done
patch+="]"
"$KUBECTL" patch mutatingwebhookconfiguration "$WEBHOOK_CONFIG" --type=json -p "$patch" >/dev/null

# 2. The serving certificate and key, with the CA for reference (never its key). Server-side
# apply: a client-side apply would copy the whole Secret, tls.key included, into the
# kubectl.kubernetes.io/last-applied-configuration annotation, readable by anyone who may read
# the Secret's metadata.
"$KUBECTL" -n "$NAMESPACE" create secret generic "$SECRET" --type=kubernetes.io/tls \
  --from-file=tls.crt=tls.crt --from-file=tls.key=tls.key --from-file=ca.crt=ca.crt \
  --dry-run=client -o yaml \
  | "$KUBECTL" apply --server-side --force-conflicts --field-manager=modelcar-prefetcher-webhook-certs -f - >/dev/null

echo "webhook-certs: Secret $NAMESPACE/$SECRET and caBundle of $WEBHOOK_CONFIG ($entries entries) updated;" \
  "certificate valid for $DAYS days"
