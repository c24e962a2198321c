// Package charttest checks the Helm chart charts/damselfly without a
// cluster: it renders the chart with helm and decodes every object strictly
// into its Kubernetes API type. It is its own module so that the Kubernetes
// API modules stay out of the project's go.mod (make chart runs it).
package charttest
