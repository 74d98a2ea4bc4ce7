# DataStorage: a static binary in an empty image (no base image to pull).
# Build context: examples/kubernaut-lite, after `scripts/prebuild.sh datastorage`
# has put the binary in bin/.
FROM scratch
COPY bin/datastorage /datastorage
EXPOSE 8080 9181
USER 65532:65532
ENTRYPOINT ["/datastorage"]
