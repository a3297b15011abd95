namespace KvmObserve.Exposition;

/// <summary>
/// What <see cref="MetricsRenderer"/> writes to: families (name, Prometheus type, help) and their samples, each begun,
/// labelled and given a value. The Prometheus and OpenMetrics texts are one writer; the OTLP export collects the same
/// samples through another, so both outputs always say the same thing.
/// </summary>
public abstract class MetricWriter
{
    public abstract void Family(string name, string type, string help);

    public abstract MetricWriter Begin(string metricName);

    public abstract MetricWriter Label(string name, string value);

    public abstract MetricWriter Label(string name, long value);

    public abstract void Value(long value);

    public abstract void Value(double value);

    /// <summary>After the last family.</summary>
    public virtual void End()
    {
    }
}
