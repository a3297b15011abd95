using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Sources.Tracefs;

/// <summary>
/// task:task_newtask records, read beside the kvm ones: which thread created which. A tracefs record names its thread
/// (common_pid) but not its process, and a vCPU thread that exits before it is named (a VM that lives a second) could
/// not be given to its VM; a CLONE_THREAD child belongs to its creator's process, and the registry follows that chain.
/// </summary>
public sealed class ThreadCreations
{
    public static readonly Tracepoint Event = new("task", "task_newtask", KvmEventKind.None);

    private const ulong CloneThread = 0x10000; // CLONE_THREAD, include/uapi/linux/sched.h

    private readonly int _id;
    private readonly FieldRef _type, _creator, _child, _flags;
    private readonly int _length;

    public ThreadCreations(EventFormat format)
    {
        _id = format.Id;
        _type = FieldRef.Required(format, "common_type");
        _creator = FieldRef.Required(format, "common_pid");
        _child = FieldRef.Required(format, "pid");
        _flags = FieldRef.Required(format, "clone_flags");
        _length = new[] { _type.End, _creator.End, _child.End, _flags.End }.Max();
    }

    /// <summary>True when the record is a task_newtask one (told to the shard if it made a thread): the caller's kvm
    /// decoders need not see it. One compare for any other record.</summary>
    public bool TryHandle(ReadOnlySpan<byte> payload, Shard shard)
    {
        if (payload.Length < _type.End || (int)_type.Read(payload) != _id)
            return false;
        if (payload.Length >= _length && (_flags.Read(payload) & CloneThread) != 0)
            shard.NoteThreadCreated((int)_child.Read(payload), (int)_creator.Read(payload));
        return true;
    }
}
