# AuthWebhook: a static Go binary in an empty image (no base image to pull).
# Build context: examples/kubernaut-lite, after `scripts/prebuild.sh authwebhook`
# has put the binary in bin/ (GOFLAGS=-cover in its environment instruments it).
FROM scratch
ARG GOFLAGS
COPY bin/authwebhook /authwebhook
EXPOSE 9443
USER 65532:65532
ENTRYPOINT ["/authwebhook"]
